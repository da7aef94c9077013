#!/usr/bin/env bash
# Makes a private CA and a certificate for the relay's local TLS listeners (STARTTLS or implicit),
# valid for localhost, 127.0.0.1 and any extra names given as arguments:
#   certs/make-local-cert.sh relay.office.lan 192.168.1.10
# Writes certs/local-ca.pem (give it to the legacy clients to trust), certs/local.pem and
# certs/local-key.pem (point the listener's cert and key at them). Needs openssl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
san="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
  if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then san="$san,IP:$name"; else san="$san,DNS:$name"; fi
done
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=authrelay local CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout local-ca-key.pem -out local-ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=${1:-localhost}" -keyout local-key.pem -out local.csr 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' "$san" > local.ext
openssl x509 -req -in local.csr -CA local-ca.pem -CAkey local-ca-key.pem -CAcreateserial -days 825 \
  -extfile local.ext -out local.pem 2>/dev/null
rm -f local.csr local.ext local-ca.srl
chmod 644 local.pem local-ca.pem
echo "wrote certs/local.pem, certs/local-key.pem (for the listener) and certs/local-ca.pem (for the clients); SAN: $san"

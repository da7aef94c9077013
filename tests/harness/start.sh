#!/usr/bin/env bash
# Starts the interop stack on 127.0.0.1: fake identity provider, fake Microsoft Graph, Dovecot (IMAP, POP3,
# submission, LMTP; accepts only XOAUTH2/OAUTHBEARER tokens checked by introspection) and a
# non-system Postfix that delivers into maildirs. Installs missing Debian packages first.
# Idempotent: if the stack is up and healthy it is left alone (use stop.sh to restart).
# Env: HARNESS_RUN (runtime dir, default tests/harness/run), HARNESS_SKIP_INSTALL=1.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN="${HARNESS_RUN:-$HERE/run}"
. "$HERE/ports.env"
log() { printf '[harness] %s\n' "$*" >&2; }

mkdir -p "$RUN"
exec 9>"$RUN/.lock"
flock 9

healthy() {
  for p in $IDP_PORT $GRAPH_PORT $SUBMISSION_PORT $SUBMISSIONS_PORT $IMAP_PORT $POP3_PORT $POSTFIX_PORT $LMTP_PORT; do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || return 1
  done
}
if [ -s "$RUN/pids/dovecot.pid" ] && healthy; then
  exit 0
fi

PKGS=(libssl-dev pkg-config python3-selenium chromium chromium-driver haproxy redis-server docker-compose python3-venv python3-yaml dovecot-core dovecot-imapd dovecot-pop3d dovecot-submissiond dovecot-lmtpd postfix openssl python3 curl
      swaks libnet-ssleay-perl libio-socket-ssl-perl msmtp fetchmail mutt isync s-nail tmux iproute2)
if [ -z "${HARNESS_SKIP_INSTALL:-}" ]; then
  missing=()
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    made_policy=""
    # Never let the packages start the system's own Dovecot/Postfix on the standard ports.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
    fi
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
  fi
fi

"$HERE/stop.sh" >/dev/null 2>&1 || true
for p in $IDP_PORT $GRAPH_PORT $IMAP_PORT $IMAPS_PORT $POP3_PORT $POP3S_PORT $SUBMISSION_PORT $SUBMISSIONS_PORT $LMTP_PORT $POSTFIX_PORT; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    log "127.0.0.1:$p is already in use (another copy of this stack? stop it with its tests/harness/stop.sh)"
    exit 1
  fi
done
id vmail >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin vmail
mkdir -p "$RUN"/{log,pids,tls,mail,dovecot,dovecot-state,postfix-conf,postfix/queue,postfix/data}
chmod 755 "$RUN"
chown vmail:vmail "$RUN/mail"
chown postfix:postfix "$RUN/postfix/data"
if [ ! -s "$RUN/tls/ca.pem" ] || [ ! -s "$RUN/tls/cert.pem" ]; then
  # A test CA and a server certificate it signs (a self-signed CA certificate used as the server
  # certificate is rejected by strict verifiers such as webpki, rightly).
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=authrelay test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$RUN/tls/ca-key.pem" -out "$RUN/tls/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$RUN/tls/key.pem" -out "$RUN/tls/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
    > "$RUN/tls/server.ext"
  openssl x509 -req -in "$RUN/tls/server.csr" -CA "$RUN/tls/ca.pem" -CAkey "$RUN/tls/ca-key.pem" \
    -CAcreateserial -days 3650 -extfile "$RUN/tls/server.ext" -out "$RUN/tls/cert.pem" 2>/dev/null
  chmod 600 "$RUN/tls/key.pem" "$RUN/tls/ca-key.pem"
fi

render() {
  local expr=(-e "s|@RUN@|$RUN|g")
  for v in IDP_PORT IMAP_PORT IMAPS_PORT POP3_PORT POP3S_PORT SUBMISSION_PORT SUBMISSIONS_PORT SUBMISSION_LIMITED_PORT LMTP_PORT POSTFIX_PORT; do
    expr+=(-e "s|@$v@|${!v}|g")
  done
  sed "${expr[@]}" "$1" > "$2"
}
render "$HERE/dovecot.conf.in" "$RUN/dovecot.conf"
render "$HERE/dovecot-oauth2.conf.ext.in" "$RUN/dovecot-oauth2.conf.ext"
render "$HERE/postfix-main.cf.in" "$RUN/postfix-conf/main.cf"
render "$HERE/postfix-master.cf.in" "$RUN/postfix-conf/master.cf"

wait_banner() { # port prefix name: the server must really greet, not just accept
  for _ in $(seq 1 200); do
    if got="$(timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1; head -c ${#2} <&3" 2>/dev/null)" && [ "$got" = "$2" ]; then
      return 0
    fi
    sleep 0.1
  done
  log "$3 on 127.0.0.1:$1 did not greet with '$2'"; return 1
}

nohup python3 "$HERE/fake_idp.py" --port "$IDP_PORT" --graph-resource "http://127.0.0.1:$GRAPH_PORT" --log "$RUN/log/idp.log" --pidfile "$RUN/pids/idp.pid" \
  >>"$RUN/log/idp.out" 2>&1 9>&- &
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$IDP_PORT") 2>/dev/null && break; sleep 0.1; done
nohup python3 "$HERE/fake_graph.py" --port "$GRAPH_PORT" --idp-port "$IDP_PORT" --smtp-port "$POSTFIX_PORT" \
  --pidfile "$RUN/pids/graph.pid" >>"$RUN/log/graph.out" 2>&1 9>&- &
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$GRAPH_PORT") 2>/dev/null && break; sleep 0.1; done

doveconf -c "$RUN/dovecot.conf" -n >/dev/null
dovecot -c "$RUN/dovecot.conf" </dev/null >>"$RUN/log/dovecot.out" 2>&1 9>&-
for _ in $(seq 1 50); do [ -s "$RUN/dovecot/master.pid" ] && break; sleep 0.1; done
cp "$RUN/dovecot/master.pid" "$RUN/pids/dovecot.pid"
wait_banner "$IMAP_PORT" "* OK" dovecot-imap
wait_banner "$POP3_PORT" "+OK" dovecot-pop3
wait_banner "$SUBMISSION_PORT" "220" dovecot-submission
wait_banner "$LMTP_PORT" "220" dovecot-lmtp

postfix -c "$RUN/postfix-conf" check
postfix -c "$RUN/postfix-conf" start </dev/null >>"$RUN/log/postfix.out" 2>&1 9>&-
wait_banner "$POSTFIX_PORT" "220" postfix
head -1 "$RUN/postfix/queue/pid/master.pid" | tr -d ' ' > "$RUN/pids/postfix.pid"
log "up: idp $IDP_PORT, graph $GRAPH_PORT, submission $SUBMISSION_PORT/$SUBMISSIONS_PORT, imap $IMAP_PORT/$IMAPS_PORT, pop3 $POP3_PORT/$POP3S_PORT, postfix $POSTFIX_PORT; run dir $RUN"

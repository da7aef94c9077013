//! The configuration loader: any text either loads or yields a list of problems, each with a
//! key path; it never panics, and no problem text echoes a secret value back.
#![no_main]

use libfuzzer_sys::fuzz_target;

const CANARY: &str = "Zq9-secret-canary";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The canary must only ever be a secret's value: an input that already holds it (as a key
    // name, say, which problems rightly quote) proves nothing.
    if text.contains("Zq9") {
        return;
    }
    // Put a known secret into every secret key the input names, so that a problem message
    // that quotes a value would show it.
    let text = text
        .replace("client_secret = \"", &format!("client_secret = \"{CANARY}"))
        .replace("refresh_token = \"", &format!("refresh_token = \"{CANARY}"));
    match authrelay::config::from_toml_str(&text) {
        Ok(config) => {
            assert!(!format!("{config:?}").contains(CANARY));
        }
        Err(problems) => {
            assert!(!problems.is_empty());
            for p in problems {
                assert!(!p.to_string().contains(CANARY), "{p}");
            }
        }
    }
});

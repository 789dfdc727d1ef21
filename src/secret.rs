//! The daemon's fingerprint secret (in the data dir, mode 0600), the team's shared secret
//! (`team.secret_file`), and the keyed fingerprints of credentials made with either: the
//! only form in which a credential is ever stored.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use subtle::ConstantTimeEq;

const SECRET_FILE: &str = "fingerprint.key";

#[derive(Clone)]
pub struct Fingerprinter {
    secret: [u8; 32],
    /// The credential fingerprinted last, with its fingerprint: requests mostly repeat one
    /// (always, when the daemon holds the key). In memory only, as the requests carrying
    /// it are, and compared in constant time.
    last: Arc<Mutex<Option<Seen>>>,
}

struct Seen {
    credential: Box<[u8]>,
    fingerprint: Arc<str>,
}

impl std::fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fingerprinter(..)")
    }
}

impl Fingerprinter {
    /// Reads the secret from `data_dir`, creating it (0600) on first use.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Fingerprinter> {
        let path = data_dir.join(SECRET_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    anyhow::anyhow!("{} is damaged (not 32 bytes); remove it to make a new one (fingerprints in old ledger lines will then no longer match)", path.display())
                })?;
                Ok(Fingerprinter::with_secret(secret))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                getrandom::fill(&mut secret).map_err(|e| {
                    anyhow::anyhow!("no randomness for the fingerprint secret: {e}")
                })?;
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                let mut f = opts.open(&path)?;
                f.write_all(&secret)?;
                f.sync_all()?;
                Ok(Fingerprinter::with_secret(secret))
            }
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    fn with_secret(secret: [u8; 32]) -> Fingerprinter {
        Fingerprinter {
            secret,
            last: Arc::default(),
        }
    }

    /// `fp-` and 128 bits of keyed blake3 of the credential, in hex.
    pub fn fingerprint(&self, credential: &[u8]) -> Arc<str> {
        // The slot is replaced whole, so a panic cannot leave it half-written.
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(seen) = last.as_ref() {
            if bool::from(seen.credential.as_ref().ct_eq(credential)) {
                return seen.fingerprint.clone();
            }
        }
        let fingerprint = self.compute(credential);
        *last = Some(Seen {
            credential: credential.into(),
            fingerprint: fingerprint.clone(),
        });
        fingerprint
    }

    fn compute(&self, credential: &[u8]) -> Arc<str> {
        let hex = blake3::keyed_hash(&self.secret, credential).to_hex();
        let mut text = [0u8; 35];
        text[..3].copy_from_slice(b"fp-");
        text[3..].copy_from_slice(&hex.as_bytes()[..32]);
        // "fp-" and hex digits are ASCII, so always UTF-8; the fallback is never taken.
        Arc::from(std::str::from_utf8(&text).unwrap_or("fp-"))
    }
}

/// The team's shared secret. Every daemon of the team reads the same file, so fingerprints
/// keyed with it (and so cache partitions) are the same on each; entries the team shares
/// are sealed with a key derived from it too.
pub struct TeamSecret([u8; 32]);

/// Fewest bytes a team secret file must hold: 256 bits, as `openssl rand -hex 32` makes.
const TEAM_SECRET_MIN: usize = 32;

impl std::fmt::Debug for TeamSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TeamSecret(..)")
    }
}

impl TeamSecret {
    /// Reads the secret from `path`: any bytes, at least 32 (a text file's surrounding
    /// white space aside).
    pub fn load(path: &Path) -> anyhow::Result<TeamSecret> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read team.secret_file {}: {e}", path.display()))?;
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(file = %path.display(), "team.secret_file can be read by other users of this machine; make it 0600");
            }
        }
        let material = match std::str::from_utf8(&bytes) {
            Ok(text) => text.trim().as_bytes(),
            Err(_) => &bytes[..],
        };
        if material.len() < TEAM_SECRET_MIN {
            anyhow::bail!(
                "team.secret_file {} holds fewer than {TEAM_SECRET_MIN} bytes; make one with `openssl rand -hex 32`",
                path.display()
            );
        }
        Ok(TeamSecret(blake3::derive_key(
            "chatcache team secret 2026-12 v1",
            material,
        )))
    }

    #[cfg(test)]
    pub fn from_material(material: &[u8]) -> TeamSecret {
        TeamSecret(blake3::derive_key(
            "chatcache team secret 2026-12 v1",
            material,
        ))
    }

    /// The fingerprinter every daemon of the team shares.
    pub fn fingerprinter(&self) -> Fingerprinter {
        Fingerprinter::with_secret(blake3::derive_key(
            "chatcache team credential fingerprint v1",
            &self.0,
        ))
    }

    /// The key that seals entries shared with the team.
    pub fn entry_key(&self) -> [u8; 32] {
        blake3::derive_key("chatcache team cache entry seal v1", &self.0)
    }
}

/// blake3 hex of a local client token, as kept in the config's `[[tokens]]`.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// A new local client token: `cc-` and 256 random bits in hex.
pub fn new_token() -> anyhow::Result<String> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!("cc-{}", blake3::Hash::from_bytes(raw).to_hex()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_keyed_and_stable() {
        let a = Fingerprinter::with_secret([1; 32]);
        let b = Fingerprinter::with_secret([2; 32]);
        assert_eq!(a.fingerprint(b"Bearer k"), a.fingerprint(b"Bearer k"));
        assert_ne!(a.fingerprint(b"Bearer k"), b.fingerprint(b"Bearer k"));
        assert_ne!(a.fingerprint(b"Bearer k"), a.fingerprint(b"Bearer j"));
        assert!(!a
            .fingerprint(b"Bearer k")
            .contains(&blake3::hash(b"Bearer k").to_hex()[..8]));
    }

    #[test]
    fn the_remembered_fingerprint_is_always_the_credentials_own() {
        let f = Fingerprinter::with_secret([3; 32]);
        let asks: [&[u8]; 7] = [
            b"Bearer k",
            b"Bearer k",
            b"Bearer kk",
            b"Bearer k",
            b"Bearer j",
            b"",
            b"Bearer j",
        ];
        for credential in asks {
            assert_eq!(f.fingerprint(credential), f.compute(credential));
        }
        let clone = f.clone();
        assert_eq!(clone.fingerprint(b"Bearer x"), f.compute(b"Bearer x"));
        assert_eq!(f.fingerprint(b"Bearer k"), f.compute(b"Bearer k"));
    }

    #[test]
    fn team_secrets_agree_across_daemons_and_differ_from_the_daemons_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("team.key");
        std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        let a = TeamSecret::load(&path).unwrap();
        std::fs::write(&path, "ab".repeat(32)).unwrap();
        let b = TeamSecret::load(&path).unwrap();
        let own = Fingerprinter::load_or_create(dir.path()).unwrap();
        let fa = a.fingerprinter().fingerprint(b"Bearer k");
        assert_eq!(fa, b.fingerprinter().fingerprint(b"Bearer k"));
        assert_ne!(fa, a.fingerprinter().fingerprint(b"Bearer j"));
        assert_ne!(fa, own.fingerprint(b"Bearer k"));
        assert_eq!(a.entry_key(), b.entry_key());
        assert_ne!(
            a.entry_key(),
            TeamSecret::from_material(&[7; 32]).entry_key()
        );
        assert!(!format!("{a:?}").contains("ab"));
        std::fs::write(&path, "short\n").unwrap();
        let e = TeamSecret::load(&path).unwrap_err().to_string();
        assert!(e.contains("fewer than 32 bytes"), "{e}");
        assert!(TeamSecret::load(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn secret_file_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Fingerprinter::load_or_create(dir.path()).unwrap();
        let b = Fingerprinter::load_or_create(dir.path()).unwrap();
        assert_eq!(a.fingerprint(b"x"), b.fingerprint(b"x"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}

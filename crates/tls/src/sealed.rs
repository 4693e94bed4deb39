//! Sealing a small message for whoever holds a shared secret: ChaCha20-Poly1305 (ring)
//! under a key derived from the secret, with a random nonce in front. A joining node and
//! the core share the join token's secret, so the core's answer (the node's credentials)
//! is readable by that node alone, even by another client that can read the answers'
//! subjects.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use crate::TlsError;

fn key(secret: &str) -> LessSafeKey {
    let digest = Sha256::new()
        .chain_update(b"strato sealed message v1\n")
        .chain_update(secret.as_bytes())
        .finalize();
    let key = UnboundKey::new(&CHACHA20_POLY1305, &digest).expect("a 32-byte key");
    LessSafeKey::new(key)
}

/// `plaintext` sealed for `secret`: nonce, then ciphertext and tag.
pub fn seal(secret: &str, plaintext: &[u8]) -> Result<Vec<u8>, TlsError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| TlsError::Generate("the system has no randomness to give".into()))?;
    let mut sealed = plaintext.to_vec();
    key(secret)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut sealed,
        )
        .map_err(|_| TlsError::Generate("sealing failed".into()))?;
    let mut out = nonce.to_vec();
    out.append(&mut sealed);
    Ok(out)
}

/// The plaintext of a message [`seal`]ed for `secret`; [`TlsError::Unsealable`] when it
/// was sealed for another secret or altered.
pub fn open(secret: &str, sealed: &[u8]) -> Result<Vec<u8>, TlsError> {
    if sealed.len() < NONCE_LEN {
        return Err(TlsError::Unsealable);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| TlsError::Unsealable)?;
    let mut body = body.to_vec();
    let plain = key(secret)
        .open_in_place(nonce, Aad::empty(), &mut body)
        .map_err(|_| TlsError::Unsealable)?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_secret_opens_what_it_sealed() {
        let sealed = seal("s3cret", b"nats://node:pw@10.0.0.1:4222").unwrap();
        assert!(!sealed.windows(b"node:pw".len()).any(|w| w == b"node:pw"));
        assert_eq!(
            open("s3cret", &sealed).unwrap(),
            b"nats://node:pw@10.0.0.1:4222"
        );
        assert!(matches!(open("other", &sealed), Err(TlsError::Unsealable)));
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(matches!(
            open("s3cret", &altered),
            Err(TlsError::Unsealable)
        ));
        assert!(matches!(
            open("s3cret", b"short"),
            Err(TlsError::Unsealable)
        ));
        assert_ne!(seal("s3cret", b"x").unwrap(), seal("s3cret", b"x").unwrap());
    }
}

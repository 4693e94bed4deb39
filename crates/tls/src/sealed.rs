//! Sealing a small message for whoever holds a shared secret: ChaCha20-Poly1305 (ring)
//! under a key derived from the secret, with a random nonce in front.
//!
//! A joining node and the core agree on that secret with an ephemeral X25519 exchange
//! bound to the join token ([`Handshake`]): the core's answer (the node's credentials) is
//! readable by that node alone, even by another holder of the same multi-use token who
//! can read the answers' subjects, and a client without the token cannot read any.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::agreement::{agree_ephemeral, EphemeralPrivateKey, UnparsedPublicKey, X25519};
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

/// One side of an ephemeral X25519 key agreement.
pub struct Handshake {
    private: EphemeralPrivateKey,
    /// This side's public key, to send to the other.
    pub public: Vec<u8>,
}

impl Handshake {
    /// A fresh key pair.
    pub fn new() -> Result<Handshake, TlsError> {
        let private = EphemeralPrivateKey::generate(&X25519, &SystemRandom::new())
            .map_err(|_| TlsError::Generate("cannot make an X25519 key".into()))?;
        let public = private
            .compute_public_key()
            .map_err(|_| TlsError::Generate("cannot make an X25519 key".into()))?
            .as_ref()
            .to_vec();
        Ok(Handshake { private, public })
    }

    /// The secret both sides get from this key, the other's public key and the `bound`
    /// secret they already share (the join token's), to [`seal`] and [`open`] with.
    pub fn secret(self, peer_public: &[u8], bound: &str) -> Result<String, TlsError> {
        agree_ephemeral(
            self.private,
            &UnparsedPublicKey::new(&X25519, peer_public),
            |shared| {
                let digest = Sha256::new()
                    .chain_update(b"strato join v1\n")
                    .chain_update(shared)
                    .chain_update(bound.as_bytes())
                    .finalize();
                digest
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            },
        )
        .map_err(|_| TlsError::Unsealable)
    }
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

    #[test]
    fn both_sides_of_a_handshake_agree_and_the_token_binds_it() {
        let (node, core) = (Handshake::new().unwrap(), Handshake::new().unwrap());
        let (node_public, core_public) = (node.public.clone(), core.public.clone());
        let at_core = core.secret(&node_public, "token").unwrap();
        let at_node = node.secret(&core_public, "token").unwrap();
        assert_eq!(at_core, at_node);
        let other = Handshake::new().unwrap();
        assert_ne!(other.secret(&core_public, "token").unwrap(), at_core);
        // Without the same token the two sides of one exchange do not agree.
        let (a, b) = (Handshake::new().unwrap(), Handshake::new().unwrap());
        let (a_public, b_public) = (a.public.clone(), b.public.clone());
        assert_ne!(
            a.secret(&b_public, "token").unwrap(),
            b.secret(&a_public, "other").unwrap()
        );
        assert!(Handshake::new().unwrap().secret(b"short", "t").is_err());
    }
}

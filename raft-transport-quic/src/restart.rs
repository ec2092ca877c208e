//! Noticing that a peer restarted, long before the idle timeout.
//!
//! A node that crashes sends no CONNECTION_CLOSE, so its peers' connections to it look alive
//! until quinn's idle timeout (`QuicConfig::idle_timeout`), and whatever they write meanwhile is
//! lost. When the node comes back on the same address, two signals end those connections:
//!
//! 1. **A stateless reset** (RFC 9000 §10.3). An endpoint that receives a packet for a
//!    connection it does not know may answer with a stateless reset, a packet that ends in the
//!    token HMAC(reset key, connection ID); every connection ID an endpoint issues comes with
//!    that token, and a peer closes the connection at once when a packet from the endpoint's
//!    address ends in it. quinn draws a random reset key per endpoint, so a restarted node's
//!    resets never match. Here the key is derived from the node's private key, which the
//!    restarted node loads again: its first answer to a packet of an old connection closes that
//!    connection, and the peer's writers redial. quinn also drops packets whose connection ID
//!    its generator did not make (by default a hash keyed at random per endpoint) before
//!    considering a reset, so the connection IDs here are plain random bytes of a fixed length,
//!    which every incarnation accepts.
//! 2. **New credentials.** A node restarted with a new key cannot make a valid reset. When it
//!    dials, though, its certificate differs from the one its earlier incarnation presented on
//!    our outbound connection, so that connection is closed and redialled (see
//!    `transport.rs`, `Link::forget_earlier_incarnation`).
//!
//! A graceful shutdown needs neither: it closes its connections, and the peers redial at once.
//! A peer's connection *from* the crashed node usually holds no reset token (a client's first
//! connection ID comes without one); it idles out harmlessly, since messages only travel on
//! connections their sender dialled.

use quinn::crypto::{CryptoError, HmacKey};
use quinn::{ConnectionId, ConnectionIdGenerator, EndpointConfig};
use rustls::crypto::tls13::{Hkdf, OkmBlock};
use rustls::crypto::SecureRandom;
use std::sync::Arc;
use std::time::Duration;

/// Length of the connection IDs this endpoint issues. A restarted node reads the IDs of the
/// packets sent to its previous incarnation with this length, so it must not change between
/// versions that may restart into each other.
const CONNECTION_ID_BYTES: usize = 8;

/// Bytes of a stateless reset token (RFC 9000 §10.3); the key's tags must be at least as long.
const RESET_TOKEN_BYTES: usize = 16;

/// The HKDF salt: keeps this use of the node's private key apart from any other. Changing it
/// makes the next restart fall back to the idle timeout once, as with new credentials.
const RESET_KEY_SALT: &[u8] = b"raft-transport-quic stateless reset key v1";

/// quinn's endpoint settings for a node whose private key (DER) is `private_key`: a stateless
/// reset key derived from it, and random connection IDs from `random`.
pub(crate) fn endpoint_config(
    private_key: &[u8],
    random: &'static dyn SecureRandom,
) -> EndpointConfig {
    let mut config = EndpointConfig::new(Arc::new(ResetKey::derive(private_key)));
    config.cid_generator(move || Box::new(RandomConnectionIds { random }));
    config
}

/// The HMAC-SHA256 key that signs stateless reset tokens, the same for every incarnation of a
/// node that keeps its private key, and unknown to anyone without that key.
struct ResetKey {
    /// HKDF-SHA256 of rustls' ring provider (the one TLS uses), whose HMAC signs.
    hkdf: &'static dyn Hkdf,
    key: OkmBlock,
    /// Invariant: at least [`RESET_TOKEN_BYTES`].
    tag_bytes: usize,
}

impl ResetKey {
    /// HKDF-SHA256 with [`RESET_KEY_SALT`] over the private key, expanded for this one use.
    fn derive(private_key: &[u8]) -> ResetKey {
        assert!(!private_key.is_empty(), "an empty private key");
        let hkdf = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
            .tls13()
            .expect("a TLS 1.3 cipher suite")
            .hkdf_provider;
        let key = hkdf
            .extract_from_secret(Some(RESET_KEY_SALT), private_key)
            .expand_block(&[b"stateless reset"]);
        let tag_bytes = hkdf.hmac_sign(&key, &[]).as_ref().len();
        assert!(tag_bytes >= RESET_TOKEN_BYTES, "a {tag_bytes}-byte HMAC");
        ResetKey {
            hkdf,
            key,
            tag_bytes,
        }
    }
}

impl HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let tag = self.hkdf.hmac_sign(&self.key, data);
        assert_eq!(
            signature_out.len(),
            self.tag_bytes,
            "quinn sizes the output"
        );
        signature_out.copy_from_slice(tag.as_ref());
    }

    fn signature_len(&self) -> usize {
        self.tag_bytes
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        let tag = self.hkdf.hmac_sign(&self.key, data);
        let expected = tag.as_ref();
        // Constant time: every byte is compared whatever the first difference.
        let difference = expected
            .iter()
            .zip(signature)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b));
        if expected.len() == signature.len() && difference == 0 {
            Ok(())
        } else {
            Err(CryptoError)
        }
    }
}

/// Connection IDs of [`CONNECTION_ID_BYTES`] random bytes. quinn's `validate` is left at its
/// default (every ID could be ours), so a restarted node answers packets for its previous
/// incarnation's IDs with a reset instead of dropping them. quinn rate-limits resets and keeps
/// each smaller than the packet that caused it, so answering stray packets amplifies nothing.
struct RandomConnectionIds {
    random: &'static dyn SecureRandom,
}

impl ConnectionIdGenerator for RandomConnectionIds {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CONNECTION_ID_BYTES];
        // quinn's own generators panic the same way: without randomness no ID is safe to issue.
        self.random
            .fill(&mut bytes)
            .expect("the system's secure random source failed");
        ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CONNECTION_ID_BYTES
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(key: &ResetKey, connection_id: &[u8]) -> Vec<u8> {
        let mut signature = vec![0; key.signature_len()];
        key.sign(connection_id, &mut signature);
        signature
    }

    /// The same private key gives the same tokens (what lets a restarted node reset its earlier
    /// incarnation's connections); another key, or another connection ID, gives other tokens.
    #[test]
    fn reset_tokens_survive_a_restart_and_nothing_else() {
        let first = ResetKey::derive(b"node 1's private key");
        let restarted = ResetKey::derive(b"node 1's private key");
        let other = ResetKey::derive(b"node 2's private key");
        let id = [7u8; CONNECTION_ID_BYTES];
        assert_eq!(first.signature_len(), 32);
        assert_eq!(token(&first, &id), token(&restarted, &id));
        assert_ne!(token(&first, &id), token(&other, &id));
        assert_ne!(
            token(&first, &id),
            token(&first, &[8u8; CONNECTION_ID_BYTES])
        );
    }

    /// `verify` accepts the key's own tag and refuses a changed, shortened or empty one.
    #[test]
    fn verify_refuses_any_other_tag() {
        let key = ResetKey::derive(b"a private key");
        let mut tag = token(&key, b"data");
        assert!(key.verify(b"data", &tag).is_ok());
        assert!(key.verify(b"other data", &tag).is_err());
        assert!(key.verify(b"data", &tag[..RESET_TOKEN_BYTES]).is_err());
        assert!(key.verify(b"data", &[]).is_err());
        tag[31] ^= 1;
        assert!(key.verify(b"data", &tag).is_err());
    }

    /// Connection IDs have the fixed length and differ from one another.
    #[test]
    fn connection_ids_are_random_and_fixed_length() {
        let mut generator = RandomConnectionIds {
            random: rustls::crypto::ring::default_provider().secure_random,
        };
        let ids: Vec<ConnectionId> = (0..64).map(|_| generator.generate_cid()).collect();
        assert!(ids.iter().all(|id| id.len() == CONNECTION_ID_BYTES));
        let distinct: std::collections::HashSet<&[u8]> = ids.iter().map(|id| &id[..]).collect();
        assert_eq!(distinct.len(), ids.len());
        assert_eq!(generator.cid_len(), CONNECTION_ID_BYTES);
    }
}

//! One-time enrolment tokens: 32 random bytes as hex, kept only as their SHA-256.

use sha2::{Digest, Sha256};

/// A new token (to hand out) and its hash (to keep).
pub fn new() -> std::io::Result<(String, String)> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    let t = hex(&b);
    let h = hash(&t);
    Ok((t, h))
}

pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_differ_and_only_their_hash_is_kept() {
        let (a, ha) = super::new().unwrap();
        let (b, _) = super::new().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(super::hash(&a), ha);
        assert_ne!(ha, a);
    }
}

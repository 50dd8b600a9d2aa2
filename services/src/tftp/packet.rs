//! TFTP packets (RFC 1350) with option negotiation (RFC 2347): what a server reads and writes.

/// A request's mode: `octet` is bytes as they are; `netascii` turns line ends into CR LF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Octet,
    Netascii,
}

/// A packet from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    Read(Request),
    Write(Request),
    Ack(u16),
    Error {
        code: u16,
        message: String,
    },
    /// DATA or OACK: only a server sends them.
    Unexpected(u16),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub filename: String,
    pub mode: Mode,
    /// Options in the order sent, names lower-cased (RFC 2347: case does not matter).
    pub options: Vec<(String, String)>,
}

/// Error codes of RFC 1350 and RFC 2347.
pub mod code {
    pub const UNDEFINED: u16 = 0;
    pub const NOT_FOUND: u16 = 1;
    pub const ACCESS: u16 = 2;
    pub const ILLEGAL: u16 = 4;
    pub const UNKNOWN_TID: u16 = 5;
    pub const OPTIONS: u16 = 8;
}

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed TFTP packet: {0}")]
pub struct Malformed(pub &'static str);

pub fn parse(b: &[u8]) -> Result<Packet, Malformed> {
    if b.len() < 4 {
        return Err(Malformed("shorter than 4 bytes"));
    }
    let op = u16::from_be_bytes([b[0], b[1]]);
    let rest = &b[2..];
    match op {
        RRQ | WRQ => {
            let r = request(rest)?;
            Ok(if op == RRQ {
                Packet::Read(r)
            } else {
                Packet::Write(r)
            })
        }
        ACK => Ok(Packet::Ack(u16::from_be_bytes([rest[0], rest[1]]))),
        ERROR => {
            let code = u16::from_be_bytes([rest[0], rest[1]]);
            let text = rest[2..].split(|c| *c == 0).next().unwrap_or_default();
            Ok(Packet::Error {
                code,
                message: String::from_utf8_lossy(text).into_owned(),
            })
        }
        DATA | OACK => Ok(Packet::Unexpected(op)),
        _ => Err(Malformed("unknown opcode")),
    }
}

/// filename NUL mode NUL [option NUL value NUL]...
fn request(b: &[u8]) -> Result<Request, Malformed> {
    if b.last() != Some(&0) {
        return Err(Malformed("request does not end with NUL"));
    }
    let mut fields = b[..b.len() - 1]
        .split(|c| *c == 0)
        .map(|f| std::str::from_utf8(f).map_err(|_| Malformed("request field is not UTF-8")));
    let filename = fields.next().ok_or(Malformed("no file name"))??;
    if filename.is_empty() {
        return Err(Malformed("empty file name"));
    }
    let mode = match fields
        .next()
        .ok_or(Malformed("no mode"))??
        .to_ascii_lowercase()
        .as_str()
    {
        "octet" => Mode::Octet,
        "netascii" => Mode::Netascii,
        "mail" => return Err(Malformed("mail mode is obsolete")),
        _ => return Err(Malformed("unknown mode")),
    };
    let mut options = Vec::new();
    while let Some(name) = fields.next() {
        let value = fields.next().ok_or(Malformed("option without a value"))??;
        options.push((name?.to_ascii_lowercase(), value.to_string()));
    }
    Ok(Request {
        filename: filename.to_string(),
        mode,
        options,
    })
}

pub fn data(block: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + payload.len());
    v.extend_from_slice(&DATA.to_be_bytes());
    v.extend_from_slice(&block.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

pub fn error(code: u16, message: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + message.len());
    v.extend_from_slice(&ERROR.to_be_bytes());
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(message.as_bytes());
    v.push(0);
    v
}

pub fn oack(options: &[(String, String)]) -> Vec<u8> {
    let mut v = OACK.to_be_bytes().to_vec();
    for (k, val) in options {
        v.extend_from_slice(k.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_request_with_options() {
        let p =
            parse(b"\x00\x01boot/ipxe.efi\x00OCTET\x00blksize\x001432\x00TSIZE\x000\x00").unwrap();
        assert_eq!(
            p,
            Packet::Read(Request {
                filename: "boot/ipxe.efi".into(),
                mode: Mode::Octet,
                options: vec![
                    ("blksize".into(), "1432".into()),
                    ("tsize".into(), "0".into())
                ],
            })
        );
    }

    #[test]
    fn refuses_what_is_not_a_request() {
        for (b, why) in [
            (&b"\x00\x01"[..], "shorter than 4 bytes"),
            (b"\x00\x01file\x00octet", "request does not end with NUL"),
            (b"\x00\x01\x00octet\x00", "empty file name"),
            (b"\x00\x01file\x00\x00", "unknown mode"),
            (b"\x00\x01file\x00mail\x00", "mail mode is obsolete"),
            (
                b"\x00\x01file\x00octet\x00blksize\x00",
                "option without a value",
            ),
            (b"\x00\x09abcd", "unknown opcode"),
            (b"\x00\x01f\xff\x00octet\x00", "request field is not UTF-8"),
        ] {
            assert_eq!(parse(b), Err(Malformed(why)), "{b:?}");
        }
    }

    #[test]
    fn writes_what_clients_read() {
        assert_eq!(data(7, b"ab"), b"\x00\x03\x00\x07ab");
        assert_eq!(error(1, "no"), b"\x00\x05\x00\x01no\x00");
        assert_eq!(
            oack(&[("tsize".into(), "12".into())]),
            b"\x00\x06tsize\x0012\x00"
        );
        assert_eq!(parse(b"\x00\x04\x01\x02").unwrap(), Packet::Ack(0x0102));
    }
}

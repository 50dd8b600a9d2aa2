//! Just enough OpenFlow 1.0 to send a frame into a switch as if a port had sent it: HELLO, then
//! PACKET_OUT with the NORMAL action, then a BARRIER to know the switch has processed it. The
//! appliance speaks it to a host bridge's management socket (`<bridge>.mgmt`, beside
//! `db.sock`) forwarded over SSH, so re-pointing the network costs one message on a connection
//! opened before the VM's break, not an `ovs-ofctl` process started inside it.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const VERSION: u8 = 0x01;
const HELLO: u8 = 0;
const ERROR: u8 = 1;
const ECHO_REQUEST: u8 = 2;
const ECHO_REPLY: u8 = 3;
const PACKET_OUT: u8 = 13;
const BARRIER_REQUEST: u8 = 18;
const BARRIER_REPLY: u8 = 19;
/// OFPP_NORMAL: the switch's own L2 forwarding, which also learns the frame's source MAC.
const PORT_NORMAL: u16 = 0xfffa;
/// No buffered packet: the frame travels in the message.
const NO_BUFFER: u32 = 0xffff_ffff;
/// Anything longer than a header and a frame is not from a switch we should believe.
const MAX_MESSAGE: usize = 64 << 10;

pub struct OpenFlow<S> {
    io: S,
    xid: u32,
}

fn header(kind: u8, len: usize, xid: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(len);
    m.push(VERSION);
    m.push(kind);
    m.extend((len as u16).to_be_bytes());
    m.extend(xid.to_be_bytes());
    m
}

impl<S: AsyncRead + AsyncWrite + Unpin> OpenFlow<S> {
    /// Says HELLO and reads the switch's; it must speak OpenFlow 1.0 (OVS does unless a
    /// bridge's `protocols` leave it out).
    pub async fn handshake(io: S) -> Result<Self, String> {
        let mut of = OpenFlow { io, xid: 0 };
        let xid = of.next_xid();
        of.send(&header(HELLO, 8, xid)).await?;
        let (version, kind, _, body) = of.message().await?;
        if kind != HELLO {
            return Err(format!(
                "OpenFlow: the switch answered HELLO with type {kind}"
            ));
        }
        if version < VERSION {
            return Err(format!("OpenFlow: the switch speaks version {version}"));
        }
        drop(body);
        Ok(of)
    }

    fn next_xid(&mut self) -> u32 {
        self.xid = self.xid.wrapping_add(1);
        self.xid
    }

    async fn send(&mut self, m: &[u8]) -> Result<(), String> {
        self.io
            .write_all(m)
            .await
            .map_err(|e| format!("OpenFlow: {e}"))?;
        self.io.flush().await.map_err(|e| format!("OpenFlow: {e}"))
    }

    /// The next message: version, type, xid, body.
    async fn message(&mut self) -> Result<(u8, u8, u32, Vec<u8>), String> {
        let mut h = [0u8; 8];
        self.io
            .read_exact(&mut h)
            .await
            .map_err(|e| format!("OpenFlow: the switch closed the connection ({e})"))?;
        let len = u16::from_be_bytes([h[2], h[3]]) as usize;
        if !(8..=MAX_MESSAGE).contains(&len) {
            return Err(format!("OpenFlow: a message of length {len}"));
        }
        let mut body = vec![0; len - 8];
        self.io
            .read_exact(&mut body)
            .await
            .map_err(|e| format!("OpenFlow: {e}"))?;
        Ok((
            h[0],
            h[1],
            u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            body,
        ))
    }

    /// Sends `frame` into the switch as if it came in on `in_port`, forwarded as the switch
    /// forwards anything (NORMAL). Only written: `barrier` says whether it was taken.
    pub async fn packet_out(&mut self, in_port: u16, frame: &[u8]) -> Result<(), String> {
        let len = 8 + 8 + 8 + frame.len();
        if len > MAX_MESSAGE {
            return Err(format!("OpenFlow: a frame of {} bytes", frame.len()));
        }
        let xid = self.next_xid();
        let mut m = header(PACKET_OUT, len, xid);
        m.extend(NO_BUFFER.to_be_bytes());
        m.extend(in_port.to_be_bytes());
        m.extend(8u16.to_be_bytes()); // actions_len: one output action
        m.extend(0u16.to_be_bytes()); // OFPAT_OUTPUT
        m.extend(8u16.to_be_bytes());
        m.extend(PORT_NORMAL.to_be_bytes());
        m.extend(0u16.to_be_bytes()); // max_len (only for the controller port)
        m.extend(frame);
        self.send(&m).await
    }

    /// Returns once the switch has processed everything sent before; an error it reported
    /// for any of it fails this.
    pub async fn barrier(&mut self) -> Result<(), String> {
        let xid = self.next_xid();
        self.send(&header(BARRIER_REQUEST, 8, xid)).await?;
        loop {
            let (_, kind, got, body) = self.message().await?;
            match kind {
                BARRIER_REPLY if got == xid => return Ok(()),
                ECHO_REQUEST => {
                    let mut m = header(ECHO_REPLY, 8 + body.len(), got);
                    m.extend(&body);
                    self.send(&m).await?;
                }
                ERROR => {
                    let code = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
                    return Err(if body.len() >= 4 {
                        format!(
                            "OpenFlow: the switch refused it (error type {}, code {})",
                            code(0),
                            code(2)
                        )
                    } else {
                        "OpenFlow: the switch refused it".into()
                    });
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_msg(s: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut h = [0u8; 8];
        s.read_exact(&mut h).await.unwrap();
        let len = u16::from_be_bytes([h[2], h[3]]) as usize;
        let mut m = h.to_vec();
        m.resize(len, 0);
        s.read_exact(&mut m[8..]).await.unwrap();
        m
    }

    #[tokio::test]
    async fn sends_a_frame_through_normal_and_waits_for_the_barrier() {
        let (ours, mut switch) = tokio::io::duplex(4096);
        let sw = tokio::spawn(async move {
            let hello = read_msg(&mut switch).await;
            assert_eq!(&hello[..4], &[1, HELLO, 0, 8]);
            // OVS answers with its highest version; 1.0 is what we asked for.
            switch
                .write_all(&[4, HELLO, 0, 8, 0, 0, 0, 9])
                .await
                .unwrap();
            let out = read_msg(&mut switch).await;
            // An echo request in between must be answered, and not end the wait.
            switch
                .write_all(&[1, ECHO_REQUEST, 0, 10, 0, 0, 0, 77, 0xab, 0xcd])
                .await
                .unwrap();
            let barrier = read_msg(&mut switch).await;
            let echo = read_msg(&mut switch).await;
            let mut reply = barrier[..8].to_vec();
            reply[1] = BARRIER_REPLY;
            switch.write_all(&reply).await.unwrap();
            (out, barrier, echo)
        });
        let mut of = OpenFlow::handshake(ours).await.unwrap();
        of.packet_out(7, &[0xee; 60]).await.unwrap();
        of.barrier().await.unwrap();
        let (out, barrier, echo) = sw.await.unwrap();
        assert_eq!(out[1], PACKET_OUT);
        assert_eq!(out.len(), 24 + 60);
        assert_eq!(&out[8..12], &[0xff; 4], "no buffer");
        assert_eq!(&out[12..14], &[0, 7], "in_port");
        assert_eq!(&out[14..16], &[0, 8], "one action");
        assert_eq!(
            &out[16..24],
            &[0, 0, 0, 8, 0xff, 0xfa, 0, 0],
            "output:NORMAL"
        );
        assert_eq!(&out[24..], &[0xee; 60][..]);
        assert_eq!(barrier[1], BARRIER_REQUEST);
        assert_eq!(&echo[..], &[1, ECHO_REPLY, 0, 10, 0, 0, 0, 77, 0xab, 0xcd]);
    }

    #[tokio::test]
    async fn a_refusal_is_reported() {
        let (ours, mut switch) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            read_msg(&mut switch).await;
            switch
                .write_all(&[1, HELLO, 0, 8, 0, 0, 0, 1])
                .await
                .unwrap();
            read_msg(&mut switch).await;
            read_msg(&mut switch).await;
            // OFPET_BAD_REQUEST / OFPBRC_BAD_PORT-like refusal.
            switch
                .write_all(&[1, ERROR, 0, 12, 0, 0, 0, 2, 0, 1, 0, 4])
                .await
                .unwrap();
        });
        let mut of = OpenFlow::handshake(ours).await.unwrap();
        of.packet_out(99, &[0; 60]).await.unwrap();
        let e = of.barrier().await.unwrap_err();
        assert!(e.contains("error type 1, code 4"), "{e}");
    }

    #[tokio::test]
    async fn a_switch_that_does_not_say_hello_is_refused() {
        let (ours, mut switch) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            read_msg(&mut switch).await;
            switch
                .write_all(&[1, ERROR, 0, 8, 0, 0, 0, 1])
                .await
                .unwrap();
        });
        let e = OpenFlow::handshake(ours).await.err().unwrap();
        assert!(e.contains("type 1"), "{e}");
    }
}

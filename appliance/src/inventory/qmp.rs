//! A minimal QMP client (QEMU Machine Protocol, JSON lines) over any byte stream; the
//! inventory reaches a VM's QMP socket through an SSH-forwarded unix socket.

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

pub struct Qmp<S> {
    io: BufReader<S>,
    /// Asynchronous events read while waiting for answers, oldest first.
    events: std::collections::VecDeque<Value>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Qmp<S> {
    /// Reads the greeting and leaves capabilities negotiation mode.
    pub async fn handshake(stream: S) -> Result<Qmp<S>, String> {
        let mut q = Qmp {
            io: BufReader::new(stream),
            events: Default::default(),
        };
        let greeting = q.read().await?;
        if greeting.get("QMP").is_none() {
            return Err(format!("not a QMP greeting: {greeting}"));
        }
        q.execute("qmp_capabilities", json!({})).await?;
        Ok(q)
    }

    /// The next message, answer or event.
    async fn message(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        let n = self
            .io
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("QMP closed the connection".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("bad QMP line: {e}"))
    }

    /// The next answer; events that come first are kept for `event`.
    async fn read(&mut self) -> Result<Value, String> {
        loop {
            let v = self.message().await?;
            if v.get("event").is_none() {
                return Ok(v);
            }
            self.events.push_back(v);
        }
    }

    /// Waits for the first event named `name` whose data `pick` accepts (events kept from
    /// before count); returns its data.
    pub async fn event(
        &mut self,
        name: &str,
        pick: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        while let Some(e) = self.events.pop_front() {
            if e["event"] == name && pick(&e["data"]) {
                return Ok(e["data"].clone());
            }
        }
        loop {
            let v = self.message().await?;
            if v["event"] == name && pick(&v["data"]) {
                return Ok(v["data"].clone());
            }
        }
    }

    pub async fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, String> {
        let msg = json!({ "execute": cmd, "arguments": args }).to_string() + "\n";
        self.io
            .get_mut()
            .write_all(msg.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let v = self.read().await?;
        match (v.get("return"), v.get("error")) {
            (Some(r), _) => Ok(r.clone()),
            (_, Some(e)) => Err(format!("{cmd}: {}", e["desc"].as_str().unwrap_or("error"))),
            _ => Err(format!("{cmd}: unexpected answer {v}")),
        }
    }
}

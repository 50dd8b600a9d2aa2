//! A small OVSDB client (JSON-RPC, RFC 7047) for the few things a move needs: a VM's port with
//! its VLAN tag and rate limit, checked after ovs-vswitchd applied it, and its removal. It runs
//! over any byte stream; the appliance uses a host's `db.sock` forwarded over SSH.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a VM's port carries besides its name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSpec {
    pub vlan: Option<u16>,
    /// Traffic towards the VM limited to this many kbit/s (a linux-htb QoS on the port).
    pub rate_kbps: Option<u32>,
}

pub struct Ovsdb<S> {
    io: S,
    buf: Vec<u8>,
    next_id: u64,
}

/// How long ovs-vswitchd may take to apply a change before it counts as failed.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

impl<S: AsyncRead + AsyncWrite + Unpin> Ovsdb<S> {
    pub fn new(io: S) -> Self {
        Ovsdb {
            io,
            buf: Vec::new(),
            next_id: 0,
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "method": method, "params": params, "id": id }).to_string();
        self.io
            .write_all(msg.as_bytes())
            .await
            .map_err(|e| format!("OVSDB write: {e}"))?;
        loop {
            // Messages are concatenated JSON values without framing.
            let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            match it.next() {
                Some(Ok(v)) => {
                    let used = it.byte_offset();
                    self.buf.drain(..used);
                    if v.get("method").and_then(Value::as_str) == Some("echo") {
                        let reply = json!({ "result": v["params"], "error": null, "id": v["id"] });
                        self.io
                            .write_all(reply.to_string().as_bytes())
                            .await
                            .map_err(|e| format!("OVSDB write: {e}"))?;
                        continue;
                    }
                    if v.get("id").and_then(Value::as_u64) == Some(id) {
                        if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
                            return Err(format!("OVSDB {method}: {e}"));
                        }
                        return Ok(v["result"].clone());
                    }
                }
                Some(Err(e)) if !e.is_eof() => return Err(format!("OVSDB sent bad JSON: {e}")),
                _ => {
                    let mut chunk = [0u8; 16384];
                    let n = self
                        .io
                        .read(&mut chunk)
                        .await
                        .map_err(|e| format!("OVSDB read: {e}"))?;
                    if n == 0 {
                        return Err("OVSDB closed the connection".into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }

    /// One transaction; any operation's error fails it, with the server's words.
    async fn transact(&mut self, ops: Vec<Value>) -> Result<Vec<Value>, String> {
        let mut params = vec![json!("Open_vSwitch")];
        params.extend(ops);
        let res = self.call("transact", Value::Array(params)).await?;
        let rows = res
            .as_array()
            .cloned()
            .ok_or_else(|| format!("OVSDB transact: unexpected answer {res}"))?;
        for r in &rows {
            if let Some(e) = r.get("error").and_then(Value::as_str) {
                let details = r.get("details").and_then(Value::as_str).unwrap_or("");
                return Err(format!("OVSDB: {e} {details}").trim().to_string());
            }
        }
        Ok(rows)
    }

    /// Bumps `next_cfg` with `ops` and waits until ovs-vswitchd has applied it (`cur_cfg`), as
    /// ovs-vsctl does. Returns the results of `ops`.
    async fn apply(&mut self, mut ops: Vec<Value>) -> Result<Vec<Value>, String> {
        let n = ops.len();
        ops.push(json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
                        "mutations": [["next_cfg", "+=", 1]]}));
        ops.push(json!({"op": "select", "table": "Open_vSwitch", "where": [],
                        "columns": ["next_cfg"]}));
        let res = self.transact(ops).await?;
        let cfg = res[n + 1]["rows"][0]["next_cfg"].clone();
        self.transact(vec![
            json!({"op": "wait", "timeout": APPLY_TIMEOUT.as_millis() as u64,
            "table": "Open_vSwitch", "where": [], "columns": ["cur_cfg"], "until": "==",
            "rows": [{"cur_cfg": cfg}]}),
        ])
        .await
        .map_err(|e| format!("ovs-vswitchd did not apply the change: {e}"))?;
        Ok(res[..n].to_vec())
    }

    /// The tag and rate limit of `port`, if it exists.
    pub async fn port(&mut self, port: &str) -> Result<Option<PortSpec>, String> {
        let res = self
            .transact(vec![json!({"op": "select", "table": "Port",
                "where": [["name", "==", port]], "columns": ["tag", "qos"]})])
            .await?;
        let Some(row) = res[0]["rows"].get(0).cloned() else {
            return Ok(None);
        };
        let vlan = row["tag"].as_u64().map(|t| t as u16);
        let mut rate_kbps = None;
        if let Some(qos) = uuid(&row["qos"]) {
            let q = self
                .transact(vec![json!({"op": "select", "table": "QoS",
                    "where": [["_uuid", "==", ["uuid", qos]]], "columns": ["other_config"]})])
                .await?;
            rate_kbps = map_get(&q[0]["rows"][0]["other_config"], "max-rate")
                .and_then(|s| s.parse::<u64>().ok())
                .map(|bps| (bps / 1000) as u32);
        }
        Ok(Some(PortSpec { vlan, rate_kbps }))
    }

    /// Puts `port` on `bridge` with `spec`, waits for ovs-vswitchd, and checks that the
    /// interface really came up (a valid `ofport`, no `error`): ovs-vsctl-style success can
    /// hide a port that vswitchd could not open. Returns the ofport. With `device_later`, a
    /// device that does not exist yet is accepted (ofport -1, "No such device"): vswitchd
    /// opens it when it appears, with the port's tag and rate limit already set.
    pub async fn add_port(
        &mut self,
        bridge: &str,
        port: &str,
        spec: &PortSpec,
        device_later: bool,
    ) -> Result<Option<i64>, String> {
        // Replacing: a stale port of the same name (an earlier, interrupted move) goes first.
        self.del_port(bridge, port).await?;
        let mut port_row = json!({"name": port, "interfaces": ["named-uuid", "iface"]});
        let mut ops = vec![
            json!({"op": "insert", "table": "Interface", "row": {"name": port},
                   "uuid-name": "iface"}),
        ];
        if let Some(v) = spec.vlan {
            port_row["tag"] = json!(v);
        }
        if let Some(kbps) = spec.rate_kbps {
            ops.push(
                json!({"op": "insert", "table": "QoS", "row": {"type": "linux-htb",
                "other_config": ["map", [["max-rate", (u64::from(kbps) * 1000).to_string()]]]},
                "uuid-name": "qos"}),
            );
            port_row["qos"] = json!(["named-uuid", "qos"]);
        }
        ops.push(json!({"op": "insert", "table": "Port", "row": port_row, "uuid-name": "port"}));
        let mutate = ops.len();
        ops.push(
            json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]],
                        "mutations": [["ports", "insert", ["set", [["named-uuid", "port"]]]]]}),
        );
        let res = self.apply(ops).await?;
        if res[mutate]["count"].as_u64() != Some(1) {
            return Err(format!("no bridge {bridge}"));
        }
        match self.ofport(port).await? {
            Ok(n) => Ok(Some(n)),
            Err(why) if device_later && why.contains("No such device") => Ok(None),
            Err(why) => {
                let _ = self.del_port(bridge, port).await;
                Err(format!("port {port} did not come up on {bridge}: {why}"))
            }
        }
    }

    /// `port`'s ofport if vswitchd has its device open, else why not.
    pub async fn ofport(&mut self, port: &str) -> Result<Result<i64, String>, String> {
        let res = self
            .transact(vec![json!({"op": "select", "table": "Interface",
                "where": [["name", "==", port]], "columns": ["ofport", "error"]})])
            .await?;
        let Some(row) = res[0]["rows"].get(0) else {
            return Ok(Err("no such interface".into()));
        };
        Ok(match (row["ofport"].as_i64(), row["error"].as_str()) {
            (Some(n), None) if n > 0 => Ok(n),
            (ofport, error) => Err(format!(
                "ofport {}, {}",
                ofport.map_or("unset".into(), |n| n.to_string()),
                error.unwrap_or("no error given")
            )),
        })
    }

    /// Removes `port` (and its QoS) from `bridge`; a missing port is not an error.
    pub async fn del_port(&mut self, bridge: &str, port: &str) -> Result<bool, String> {
        let res = self
            .transact(vec![json!({"op": "select", "table": "Port",
                "where": [["name", "==", port]], "columns": ["_uuid", "qos"]})])
            .await?;
        let Some(row) = res[0]["rows"].get(0).cloned() else {
            return Ok(false);
        };
        let id = uuid(&row["_uuid"]).ok_or("port without a uuid")?;
        let mut ops = vec![json!({"op": "mutate", "table": "Bridge",
            "where": [["name", "==", bridge]],
            "mutations": [["ports", "delete", ["set", [["uuid", id]]]]]})];
        if let Some(q) = uuid(&row["qos"]) {
            // QoS rows are roots: they outlive their port unless deleted, and are deleted only
            // once nothing refers to them, so the port row goes explicitly first.
            ops.push(
                json!({"op": "delete", "table": "Port", "where": [["_uuid", "==", ["uuid", id]]]}),
            );
            ops.push(
                json!({"op": "delete", "table": "QoS", "where": [["_uuid", "==", ["uuid", q]]]}),
            );
        }
        self.apply(ops).await?;
        Ok(true)
    }
}

/// `["uuid", "..."]` -> the uuid; an empty set (`["set", []]`) -> None.
fn uuid(v: &Value) -> Option<String> {
    match v.as_array().map(Vec::as_slice) {
        Some([kind, id]) if kind == "uuid" => id.as_str().map(str::to_string),
        _ => None,
    }
}

/// `["map", [[k, v], ...]]` -> the value of `key`.
fn map_get(v: &Value, key: &str) -> Option<String> {
    v.get(1)?
        .as_array()?
        .iter()
        .find(|kv| kv[0] == key)
        .and_then(|kv| kv[1].as_str().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ovsdb_atoms() {
        assert_eq!(uuid(&json!(["uuid", "abc"])), Some("abc".into()));
        assert_eq!(uuid(&json!(["set", []])), None);
        assert_eq!(
            map_get(&json!(["map", [["max-rate", "1000"]]]), "max-rate"),
            Some("1000".into())
        );
    }
}

//! The CLI's side of the API: one HTTP/1.1 request per call over the unix socket or TCP.

use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::{TcpStream, UnixStream};

use super::ErrorBody;

/// Where the daemon is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp { addr: String, token: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the netmigrate daemon at {endpoint}: {reason} (is `netmigrate serve` running with this state_dir?)")]
    Connect { endpoint: String, reason: String },
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        details: Vec<String>,
    },
    #[error("the daemon's answer could not be read: {0}")]
    Protocol(String),
}

pub struct Client {
    endpoint: Endpoint,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Self {
        Client { endpoint }
    }

    fn describe(&self) -> String {
        match &self.endpoint {
            Endpoint::Unix(p) => p.display().to_string(),
            Endpoint::Tcp { addr, .. } => format!("http://{addr}"),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, body).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, None).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        let connect_err = |e: std::io::Error| ClientError::Connect {
            endpoint: self.describe(),
            reason: e.to_string(),
        };
        let proto = |e: hyper::Error| ClientError::Protocol(e.to_string());
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "netmigrate")
            .header("content-type", "application/json");
        if let Endpoint::Tcp { token, .. } = &self.endpoint {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;

        let resp = match &self.endpoint {
            Endpoint::Unix(p) => {
                let s = UnixStream::connect(p).await.map_err(connect_err)?;
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                    .await
                    .map_err(proto)?;
                tokio::spawn(conn);
                send.send_request(req).await.map_err(proto)?
            }
            Endpoint::Tcp { addr, .. } => {
                let s = TcpStream::connect(addr).await.map_err(connect_err)?;
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                    .await
                    .map_err(proto)?;
                tokio::spawn(conn);
                send.send_request(req).await.map_err(proto)?
            }
        };
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(proto)?.to_bytes();
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => ClientError::Api {
                    status: status.as_u16(),
                    code: b.error.code,
                    message: b.error.message,
                    details: b.error.details,
                },
                Err(_) => ClientError::Protocol(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes)
                )),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

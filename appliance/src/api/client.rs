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

    /// Sends one request; the response's body is left to read.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
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
        match &self.endpoint {
            Endpoint::Unix(p) => {
                let s = UnixStream::connect(p).await.map_err(connect_err)?;
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                    .await
                    .map_err(proto)?;
                tokio::spawn(conn);
                send.send_request(req).await.map_err(proto)
            }
            Endpoint::Tcp { addr, .. } => {
                let s = TcpStream::connect(addr).await.map_err(connect_err)?;
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                    .await
                    .map_err(proto)?;
                tokio::spawn(conn);
                send.send_request(req).await.map_err(proto)
            }
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Opens a stream of JSON lines (`/v1/watch`); returns once the daemon has answered, so
    /// nothing it notices after this call is missed.
    pub async fn stream(&self, path: &str) -> Result<Lines, ClientError> {
        let resp = self.send(Method::GET, path, None).await?;
        let status = resp.status();
        let body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))?
                .to_bytes();
            return Err(api_error(status, &bytes));
        }
        Ok(Lines {
            body,
            buf: Vec::new(),
        })
    }
}

/// A stream of JSON lines from the daemon.
pub struct Lines {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl Lines {
    /// The next line, or None when the daemon ends the stream.
    pub async fn next(&mut self) -> Result<Option<serde_json::Value>, ClientError> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| ClientError::Protocol(e.to_string()));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(f) => {
                    let f = f.map_err(|e| ClientError::Protocol(e.to_string()))?;
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

fn api_error(status: hyper::StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => ClientError::Api {
            status: status.as_u16(),
            code: b.error.code,
            message: b.error.message,
            details: b.error.details,
        },
        Err(_) => {
            ClientError::Protocol(format!("HTTP {status}: {}", String::from_utf8_lossy(bytes)))
        }
    }
}

//! The FTP server of the image store (libunftp). A source host uploads a VM's saved state, the
//! target downloads it, possibly while the upload still runs (the store's readers follow).
//!
//! The namespace each user sees:
//!
//! ```text
//! /                      the VMs this user may read or write, as directories
//! /<vm>/                 its published generations, `<gen>.img`
//! STOR /<vm>/<name>.img  a new generation of <vm> (the name is free; the generation is next)
//! RETR /<vm>/<gen>.img   that generation, verified while it streams
//! RETR /<vm>/latest.img  the newest one, followed while it is still being uploaded
//! ```
//! Nothing else: no deletes, renames or directories of one's own; no path outside this.

mod backend;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use unftp_core::auth::{
    AuthenticationError, Authenticator, Credentials, Principal, UserDetail, UserDetailError,
    UserDetailProvider,
};

pub use backend::ImageBackend;

/// What one logged-in account may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FtpUser {
    pub name: String,
    /// VMs whose images this account may upload ("*" for any).
    pub write: Vec<String>,
    /// VMs whose images this account may download ("*" for any).
    pub read: Vec<String>,
}

impl FtpUser {
    fn allowed(list: &[String], vm: &str) -> bool {
        list.iter().any(|v| v == "*" || v == vm)
    }

    pub fn may_write(&self, vm: &str) -> bool {
        Self::allowed(&self.write, vm)
    }

    pub fn may_read(&self, vm: &str) -> bool {
        Self::allowed(&self.read, vm)
    }
}

impl fmt::Display for FtpUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl UserDetail for FtpUser {}

/// Where accounts come from: the appliance implements it over its state (per-host accounts,
/// one-time migration credentials); the FTP server knows nothing of how they are kept.
#[async_trait]
pub trait FtpAccounts: Send + Sync + fmt::Debug {
    /// The account for `user` if `password` is right, else None.
    async fn login(&self, user: &str, password: &str) -> Option<FtpUser>;
    /// The account's grants after login (they may change while a session runs).
    async fn lookup(&self, user: &str) -> Option<FtpUser>;
    /// An upload began (the manifest's "uploading" row).
    async fn upload_started(&self, _user: &str, _id: &netmigrate_image::ImageId) {}
    /// An upload was published.
    async fn published(&self, _user: &str, _image: &netmigrate_image::Published) {}
    /// An upload failed; nothing of it stays.
    async fn upload_failed(&self, _user: &str, _id: &netmigrate_image::ImageId, _reason: &str) {}
}

/// Adapts `FtpAccounts` to libunftp's authenticator and user-detail provider.
#[derive(Debug)]
pub struct Accounts<A>(pub Arc<A>);

#[async_trait]
impl<A: FtpAccounts> Authenticator for Accounts<A> {
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        let password = creds.password.as_deref().unwrap_or("");
        match self.0.login(username, password).await {
            Some(_) => Ok(Principal {
                username: username.to_string(),
            }),
            None => {
                tracing::warn!(user = username, from = %creds.source_ip, "FTP login refused");
                Err(AuthenticationError::BadPassword)
            }
        }
    }
}

#[async_trait]
impl<A: FtpAccounts> UserDetailProvider for Accounts<A> {
    type User = FtpUser;

    async fn provide_user_detail(&self, principal: &Principal) -> Result<FtpUser, UserDetailError> {
        self.0
            .lookup(&principal.username)
            .await
            .ok_or_else(|| UserDetailError::UserNotFound {
                username: principal.username.clone(),
            })
    }
}

/// FTPS: a certificate chain and its key (PEM); with it, plain FTP is refused.
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// How the server runs, beyond its store and accounts.
#[derive(Debug, Clone)]
pub struct Options {
    pub passive_ports: std::ops::RangeInclusive<u16>,
    /// FTPS only, with this certificate; None for plain FTP.
    pub tls: Option<Tls>,
    /// Hash every download on the server as well (slower: no sendfile). Receivers check
    /// against the published checksum in any case.
    pub verify_downloads: bool,
}

/// Builds the server: the image store behind per-account access.
pub fn server<A: FtpAccounts + 'static>(
    store: netmigrate_image::Store,
    accounts: Arc<A>,
    opts: Options,
) -> Result<libunftp::Server<ImageBackend, FtpUser>, libunftp::ServerError> {
    let hooks: Arc<dyn FtpAccounts> = accounts.clone();
    let auth = Arc::new(Accounts(accounts));
    let verify = opts.verify_downloads;
    let uploads = backend::Uploads::default();
    let mut b = libunftp::ServerBuilder::with_user_detail_provider(
        Box::new(move || ImageBackend::new(store.clone(), hooks.clone(), verify, uploads.clone())),
        auth.clone(),
    )
    .authenticator(auth)
    .greeting("netmigrate image store")
    .passive_ports(opts.passive_ports);
    if let Some(t) = opts.tls {
        b = b.ftps(t.cert, t.key).ftps_required(true, true);
    }
    b.build()
}

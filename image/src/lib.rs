//! netmigrate's image store: where a VM's saved state goes between its source and its target.
//!
//! Layout under the store's root: one directory per VM, one file per generation:
//!
//! ```text
//! <root>/<vm>/<gen>.img          a published image (never changes again)
//! <root>/<vm>/<gen>.img.sha256   its checksum, in `sha256sum -c` format
//! <root>/<vm>/.<gen>.img.part    an upload in progress (never visible as published)
//! <root>/<vm>/.<gen>.img.failed  a failed upload's tombstone: its number is never reused
//! <root>/<vm>/<gen>.img.zst      a published image compressed at rest (instead of `.img`)
//! ```
//!
//! - Publish is atomic: write `.part`, fsync, write the checksum, rename, fsync the directory.
//!   A crash leaves at most a `.part`, which the next `Store::open` removes and reports.
//! - SHA-256 is computed while the bytes stream in, and verified while they stream out through a
//!   `Reader`; `send_published` sends a published image with sendfile(2) for the receiver to check.
//! - A reader may start while the upload runs: it follows the writer until publish (and fails
//!   cleanly if the upload fails), so a target can restore while the source still saves.
//! - An upload that would leave less than the configured reserve free is refused up front.
//! - Optionally, published images are compressed at rest (zstd, `Store::compress`): checked
//!   against their checksum first, swapped in atomically; readers decompress and verify as they
//!   stream, REST decompresses and skips, sendfile is for uncompressed images only. Sizes and
//!   checksums are always those of the uncompressed bytes.
//!
//! The store knows nothing of SQLite: the appliance keeps its manifest rows from what the store
//! returns (`Published`, `Recovered`).

mod follow;
mod send;
mod store;
mod writer;

pub use follow::Reader;
pub use store::{ImageId, Progress, Published, Store};
pub use writer::Writer;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{0}` is not a valid VM name for the image store (letters, digits, '-', '_', '.'; not starting with '.')")]
    BadName(String),
    #[error("no image {0}")]
    NotFound(ImageId),
    #[error(
        "not enough space for {id}: {need} bytes would leave {left} bytes free on {path}, below the reserve of {reserve} bytes"
    )]
    NoSpace {
        id: ImageId,
        path: String,
        need: u64,
        left: u64,
        reserve: u64,
    },
    #[error("image {id} is corrupt: SHA-256 {actual}, expected {expected}")]
    Corrupt {
        id: ImageId,
        expected: String,
        actual: String,
    },
    #[error("cannot resume from byte {from}: image {id} has only {size} bytes")]
    BadResume { id: ImageId, from: u64, size: u64 },
    #[error("upload of {id} failed: {reason}")]
    UploadFailed { id: ImageId, reason: String },
    #[error("image store I/O on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! netmigrate's protocol servers: the FTP server of the image store (libunftp), DHCPv4
//! (dhcproto), DNS (hickory-server) and TFTP for boot files.
//!
//! The rule they follow: a server knows nothing of SQLite. Each defines the small storage trait
//! it needs (`ftp::FtpAccounts`; `dhcp::LeaseStore`, `dns::ZoneStore`) and the appliance implements it
//! over its state, as hickory-server's zone handlers are generic over where their data lives.

pub mod dhcp;
pub mod dns;
pub mod files;
pub mod ftp;
pub mod tftp;

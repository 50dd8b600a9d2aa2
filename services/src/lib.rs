//! netmigrate's protocol servers: the FTP server of the image store (libunftp) and DHCPv4
//! (dhcproto). DNS (hickory-server) and TFTP arrive with their issues.
//!
//! The rule they follow: a server knows nothing of SQLite. Each defines the small storage trait
//! it needs (`ftp::FtpAccounts`; leases, zone records to come) and the appliance implements it
//! over its state, as hickory-server's zone handlers are generic over where their data lives.

pub mod dhcp;
pub mod ftp;

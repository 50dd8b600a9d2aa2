//! netmigrate's protocol servers: DHCPv4 (dhcproto), DNS (hickory-server), FTP (libunftp) and
//! TFTP. None is built yet; each arrives with its issue.
//!
//! The rule they will follow: a server knows nothing of SQLite. Each defines the small storage
//! trait it needs (leases, zone records, FTP users) and the appliance implements it over its
//! state, as hickory-server's zone handlers are generic over where their data lives.

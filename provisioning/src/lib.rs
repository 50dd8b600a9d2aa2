//! netmigrate's provisioning: new hypervisor hosts booted over PXE, discovered, enrolled (their
//! SSH host key pinned on first boot) and made ready as migration targets, with no agent left
//! behind. Not built yet; it arrives with the provisioning issue.

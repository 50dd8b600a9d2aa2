//! The gateway role (`[router]`): IPv4 forwarding between the lab networks and the uplink, with
//! source NAT to the uplink's address. The rules are one nftables table of the appliance's own
//! (`ip netmigrate`), written through libnftables (nftables' own library, loaded at run time),
//! replaced atomically; set up at start, replaced at reload, removed at stop, when forwarding
//! goes back to what it was.

use std::ffi::{c_char, c_int, c_void, CStr, CString};

use crate::config::RouterConfig;

const TABLE: &str = "ip netmigrate";
const FORWARDING: &str = "/proc/sys/net/ipv4/ip_forward";

/// The router as set up; `remove` undoes it.
pub struct Router {
    config: RouterConfig,
    /// ip_forward before the appliance set it.
    forwarding_before: String,
}

/// The ruleset for `r`: the table is created empty first so that deleting it never fails, then
/// made anew, all in one transaction.
pub fn ruleset(r: &RouterConfig) -> String {
    let nat = if r.nat {
        format!("    oifname \"{}\" masquerade\n", r.uplink)
    } else {
        String::new()
    };
    format!(
        "add table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{\n  \
         chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{nat}  }}\n}}\n"
    )
}

impl Router {
    pub fn start(config: &RouterConfig) -> Result<Router, String> {
        let name = CString::new(config.uplink.as_str()).map_err(|e| e.to_string())?;
        // SAFETY: a valid NUL-terminated name.
        if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
            return Err(format!(
                "router.uplink: there is no interface `{}`",
                config.uplink
            ));
        }
        let forwarding_before = std::fs::read_to_string(FORWARDING)
            .map_err(|e| format!("reading {FORWARDING}: {e}"))?
            .trim()
            .to_string();
        Nft::open()?.run(&ruleset(config))?;
        std::fs::write(FORWARDING, "1").map_err(|e| format!("enabling forwarding: {e}"))?;
        tracing::info!(
            uplink = %config.uplink,
            nat = config.nat,
            "routing between the lab networks and the uplink"
        );
        Ok(Router {
            config: config.clone(),
            forwarding_before,
        })
    }

    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// Removes the table and puts forwarding back.
    pub fn remove(self) -> Result<(), String> {
        let rules = Nft::open()?.run(&format!("add table {TABLE}\ndelete table {TABLE}\n"));
        let fwd = std::fs::write(FORWARDING, &self.forwarding_before)
            .map_err(|e| format!("restoring forwarding: {e}"));
        rules.and(fwd)
    }
}

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxBuffer = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxGetBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// libnftables, loaded with dlopen: a missing library is an error at the time a router is
/// asked for, not a dependency of every appliance.
struct Nft {
    lib: *mut c_void,
    ctx: *mut c_void,
    free: CtxFree,
    run: RunCmd,
    error: CtxGetBuffer,
}

impl Nft {
    fn open() -> Result<Nft, String> {
        let name = c"libnftables.so.1";
        // SAFETY: dlopen with a valid name; the handle is closed in Drop.
        let lib = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if lib.is_null() {
            return Err(
                "the router needs libnftables (Debian: apt install libnftables1)".to_string(),
            );
        }
        let sym = |s: &CStr| {
            // SAFETY: lib is a live handle, s a valid name.
            let p = unsafe { libc::dlsym(lib, s.as_ptr()) };
            (!p.is_null())
                .then_some(p)
                .ok_or_else(|| format!("libnftables lacks {}", s.to_string_lossy()))
        };
        let found = (|| {
            Ok::<_, String>((
                sym(c"nft_ctx_new")?,
                sym(c"nft_ctx_free")?,
                sym(c"nft_ctx_buffer_error")?,
                sym(c"nft_ctx_get_error_buffer")?,
                sym(c"nft_run_cmd_from_buffer")?,
            ))
        })();
        let (new, free, buffer_error, error, run) = match found {
            Ok(f) => f,
            Err(e) => {
                // SAFETY: lib came from dlopen and nothing of it is in use.
                unsafe { libc::dlclose(lib) };
                return Err(e);
            }
        };
        // SAFETY: the symbols have these C signatures (nftables' libnftables.h).
        unsafe {
            let new: CtxNew = std::mem::transmute::<*mut c_void, CtxNew>(new);
            let free: CtxFree = std::mem::transmute::<*mut c_void, CtxFree>(free);
            let buffer_error: CtxBuffer =
                std::mem::transmute::<*mut c_void, CtxBuffer>(buffer_error);
            let error: CtxGetBuffer = std::mem::transmute::<*mut c_void, CtxGetBuffer>(error);
            let run: RunCmd = std::mem::transmute::<*mut c_void, RunCmd>(run);
            let ctx = new(0);
            if ctx.is_null() {
                libc::dlclose(lib);
                return Err("libnftables: no context".into());
            }
            buffer_error(ctx);
            Ok(Nft {
                lib,
                ctx,
                free,
                run,
                error,
            })
        }
    }

    /// Runs `commands` as one transaction; nft's own message on failure.
    fn run(&self, commands: &str) -> Result<(), String> {
        let c = CString::new(commands).map_err(|e| e.to_string())?;
        // SAFETY: ctx is live; c is NUL-terminated; the error buffer belongs to ctx and is
        // copied before ctx is used again.
        unsafe {
            if (self.run)(self.ctx, c.as_ptr()) == 0 {
                return Ok(());
            }
            let e = (self.error)(self.ctx);
            let msg = if e.is_null() {
                "nftables refused the rules".to_string()
            } else {
                CStr::from_ptr(e).to_string_lossy().trim().to_string()
            };
            Err(format!("nftables: {msg}"))
        }
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        // SAFETY: both were obtained in open() and are released once.
        unsafe {
            (self.free)(self.ctx);
            libc::dlclose(self.lib);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_masquerades_only_with_nat() {
        let mut r = RouterConfig {
            uplink: "up0".into(),
            nat: true,
        };
        let text = ruleset(&r);
        assert!(text.starts_with("add table ip netmigrate\ndelete table ip netmigrate\n"));
        assert!(text.contains("type nat hook postrouting priority srcnat;"));
        assert!(text.contains("oifname \"up0\" masquerade"));
        r.nat = false;
        assert!(!ruleset(&r).contains("masquerade"));
    }
}

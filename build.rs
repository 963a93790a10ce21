//! Lays out the release `trellis` binary's code: the functions it runs when it starts, serves
//! its first requests and waits are listed in `link/trellis.order` (written by
//! `scripts/link-order.sh`), and the linker puts them side by side at the start of `.text`.
//!
//! Why: the kernel maps an executable's code in 64 KiB windows around each page it runs, so
//! the few thousand functions a proxy touches, scattered over 16 MB of code, made 7–9 MB of
//! its idle resident memory; grouped, they make about 3 MB (docs/performance.md). The order
//! changes where code sits, never what it does.
//!
//! Only release builds, and only with a linker that takes `--symbol-ordering-file` (LLD, the
//! default linker of Rust's x86_64 Linux toolchain since 1.90): the build script links an
//! empty program with the flag first, and builds without it (saying so) when that fails.
//! `TRELLIS_LINK_ORDER=0` turns it off. Names in the file that the binary lacks are skipped,
//! so a stale file costs memory, not correctness.

use std::{env, ffi::OsString, path::PathBuf, process::Command};

const ORDER: &str = "link/trellis.order";

fn main() {
    println!("cargo:rerun-if-changed={ORDER}");
    println!("cargo:rerun-if-env-changed=TRELLIS_LINK_ORDER");
    if env::var("PROFILE").as_deref() != Ok("release") || env::var("TRELLIS_LINK_ORDER").as_deref() == Ok("0") {
        return;
    }
    let Some(root) = env::var_os("CARGO_MANIFEST_DIR") else {
        return;
    };
    let order = PathBuf::from(root).join(ORDER);
    let flags = [
        format!("-Wl,--symbol-ordering-file={}", order.display()),
        // A name the binary lacks (another dependency version, another toolchain) is not an
        // error: that function keeps its default place.
        "-Wl,--no-warn-symbol-ordering".to_owned(),
    ];
    if let Err(why) = linker_takes(&flags) {
        println!(
            "cargo:warning=trellis is linked without its code layout ({why}); \
             it works the same, with a few MB more resident memory"
        );
        return;
    }
    for flag in flags {
        println!("cargo:rustc-link-arg-bin=trellis={flag}");
    }
}

/// Links an empty program with `flags` and the linker settings cargo would use, so that a
/// toolchain whose linker lacks them (GNU ld) builds the proxy as before.
fn linker_takes(flags: &[String]) -> Result<(), String> {
    let out = PathBuf::from(env::var_os("OUT_DIR").ok_or("no OUT_DIR")?);
    let src = out.join("probe.rs");
    std::fs::write(&src, "fn main() {}\n").map_err(|e| e.to_string())?;
    let mut rustc = Command::new(env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc")));
    if let Ok(target) = env::var("TARGET") {
        rustc.args(["--target", &target]);
    }
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        let mut arg = OsString::from("linker=");
        arg.push(linker);
        rustc.arg("-C").arg(arg);
    }
    // The flags the proxy itself is built with (a `-C linker=` or `-fuse-ld` among them).
    if let Ok(encoded) = env::var("CARGO_ENCODED_RUSTFLAGS") {
        rustc.args(encoded.split('\x1f').filter(|f| !f.is_empty()));
    }
    for flag in flags {
        rustc.arg("-C").arg(format!("link-arg={flag}"));
    }
    rustc.arg("-o").arg(out.join("probe")).arg(&src).output().map_err(|e| format!("cannot run rustc: {e}")).and_then(
        |o| match o.status.success() {
            true => Ok(()),
            false => Err("the linker does not take --symbol-ordering-file".to_owned()),
        },
    )
}

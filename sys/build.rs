//! Generate bindings for libguestfs's C API from the installed `guestfs.h`.
//!
//! The header is found through pkg-config so distribution layouts need no special-casing.
//! Failures end in one line naming the Debian package that provides what is missing.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    let lib = match pkg_config::Config::new()
        .atleast_version("1.40")
        .probe("libguestfs")
    {
        Ok(lib) => lib,
        Err(e) => {
            eprintln!(
                "error: libguestfs development files not found through pkg-config ({e}); \
                 install them with `apt-get install libguestfs-dev pkg-config` (or run scripts/setup.sh)"
            );
            std::process::exit(1);
        }
    };
    println!("cargo:version={}", lib.version);

    let mut builder = bindgen::Builder::default()
        .header("wrapper.h")
        .allowlist_function("guestfs_.*")
        .allowlist_type("guestfs_.*")
        .allowlist_var("GUESTFS_.*")
        .derive_default(true)
        .layout_tests(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for path in &lib.include_paths {
        builder = builder.clang_arg(format!("-I{}", path.display()));
    }
    // bindgen panics when libclang is missing; catch it to print an actionable line instead.
    let generated =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || builder.generate()));
    let bindings = match generated {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            eprintln!(
                "error: bindgen could not parse guestfs.h ({e}); is libguestfs-dev installed?"
            );
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!(
                "error: bindgen could not load libclang; install it with `apt-get install libclang-dev` \
                 (or run scripts/setup.sh)"
            );
            std::process::exit(1);
        }
    };
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("writing bindings.rs into OUT_DIR");
}

//! Safe wrapper over the raw libguestfs bindings in `guestfs-sys`.
//!
//! This module and `sys/` are the only places with `unsafe`. It exposes just the calls the
//! tool uses. A [`Guestfs`] owns one handle (closed on drop); every failing call returns a
//! [`GuestfsError`] carrying libguestfs's own last error message and errno.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt;
use std::ptr;

use guestfs_sys as sys;

/// A libguestfs call failed. `message` is libguestfs's last error for the handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestfsError {
    pub call: &'static str,
    pub message: String,
    pub errno: i32,
}

impl fmt::Display for GuestfsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.call, self.message)?;
        if self.errno != 0 {
            write!(f, " (errno {})", self.errno)?;
        }
        Ok(())
    }
}

impl std::error::Error for GuestfsError {}

pub type Result<T> = std::result::Result<T, GuestfsError>;

/// Options for [`Guestfs::add_drive`]; `None` leaves libguestfs's default.
#[derive(Debug, Default, Clone)]
pub struct DriveOptions {
    pub readonly: bool,
    pub format: Option<String>,
    /// `"nbd"` to attach an NBD export (then `servers` names it, e.g. `unix:/path/sock`).
    pub protocol: Option<String>,
    pub servers: Vec<String>,
    pub cachemode: Option<String>,
    pub discard: Option<String>,
}

/// What an event callback is told.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A long-running call's progress: `position` of `total`.
    Progress { position: u64, total: u64 },
    /// Appliance console output or library/trace/warning messages (verbose/debug).
    Message { kind: &'static str, text: &'a str },
}

type Callback = Box<dyn FnMut(Event<'_>) + Send>;

/// One libguestfs handle. Not `Sync`: libguestfs handles are used from one thread at a time.
pub struct Guestfs {
    handle: *mut sys::guestfs_h,
    // Boxed twice so the pointer handed to C stays stable while the Vec grows.
    #[allow(clippy::vec_box)]
    callbacks: Vec<Box<Callback>>,
}

// SAFETY: a guestfs handle may be moved between threads as long as it is not used
// concurrently; `Guestfs` is not `Sync` and every method takes `&mut self` or `&self` on one
// thread at a time.
unsafe impl Send for Guestfs {}

impl Drop for Guestfs {
    fn drop(&mut self) {
        if !self.handle.is_null() {
            // SAFETY: handle came from guestfs_create_flags and is closed exactly once.
            unsafe { sys::guestfs_close(self.handle) };
            self.handle = ptr::null_mut();
        }
    }
}

fn cstring(call: &'static str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| GuestfsError {
        call,
        message: format!("argument contains a NUL byte: {s:?}"),
        errno: libc::EINVAL,
    })
}

/// A NULL-terminated `char *const *` built from Rust strings; keeps the storage alive.
struct CStrArray {
    _owned: Vec<CString>,
    ptrs: Vec<*mut c_char>,
}

impl CStrArray {
    fn new(call: &'static str, items: &[impl AsRef<str>]) -> Result<Self> {
        let owned = items
            .iter()
            .map(|s| cstring(call, s.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let mut ptrs: Vec<*mut c_char> = owned.iter().map(|c| c.as_ptr() as *mut c_char).collect();
        ptrs.push(ptr::null_mut());
        Ok(CStrArray {
            _owned: owned,
            ptrs,
        })
    }
    fn as_ptr(&self) -> *const *mut c_char {
        self.ptrs.as_ptr()
    }
}

/// Take ownership of a malloc'd C string returned by libguestfs.
///
/// SAFETY: `p` must be NULL or a malloc'd NUL-terminated string that the caller now owns.
unsafe fn take_string(p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    let s = CStr::from_ptr(p).to_string_lossy().into_owned();
    libc::free(p as *mut c_void);
    Some(s)
}

/// Take ownership of a malloc'd NULL-terminated array of malloc'd strings.
///
/// SAFETY: as for [`take_string`], for the array and each element.
unsafe fn take_string_list(p: *mut *mut c_char) -> Option<Vec<String>> {
    if p.is_null() {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let item = *p.add(i);
        if item.is_null() {
            break;
        }
        out.push(take_string(item).unwrap_or_default());
        i += 1;
    }
    libc::free(p as *mut c_void);
    Some(out)
}

/// Turn libguestfs's flat "key, value, key, value" hash lists into pairs.
fn pairs(flat: Vec<String>) -> Vec<(String, String)> {
    let mut it = flat.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    out
}

unsafe extern "C" fn event_trampoline(
    _g: *mut sys::guestfs_h,
    opaque: *mut c_void,
    event: u64,
    _event_handle: c_int,
    _flags: c_int,
    buf: *const c_char,
    buf_len: usize,
    array: *const u64,
    array_len: usize,
) {
    // A panic must not unwind into C (that aborts the process): catch it and log it.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: as for `dispatch_event`.
        unsafe { dispatch_event(opaque, event, buf, buf_len, array, array_len) }
    }));
    if caught.is_err() {
        log::error!("a libguestfs event callback panicked; the event was dropped");
    }
}

/// The body of [`event_trampoline`], run inside its `catch_unwind`.
unsafe fn dispatch_event(
    opaque: *mut c_void,
    event: u64,
    buf: *const c_char,
    buf_len: usize,
    array: *const u64,
    array_len: usize,
) {
    // SAFETY: opaque is the `Box<Callback>` registered in `on_event`, alive as long as the handle.
    let cb = &mut *(opaque as *mut Callback);
    let ev = event as u32;
    if ev == sys::GUESTFS_EVENT_PROGRESS {
        if array_len >= 4 {
            let a = std::slice::from_raw_parts(array, array_len);
            cb(Event::Progress {
                position: a[2],
                total: a[3],
            });
        }
        return;
    }
    let kind = match ev {
        sys::GUESTFS_EVENT_APPLIANCE => "appliance",
        sys::GUESTFS_EVENT_LIBRARY => "library",
        sys::GUESTFS_EVENT_TRACE => "trace",
        sys::GUESTFS_EVENT_WARNING => "warning",
        _ => "event",
    };
    let bytes = if buf.is_null() {
        &[][..]
    } else {
        std::slice::from_raw_parts(buf as *const u8, buf_len)
    };
    let text = String::from_utf8_lossy(bytes);
    cb(Event::Message { kind, text: &text });
}

/// Which events a callback receives.
#[derive(Debug, Clone, Copy)]
pub enum EventKind {
    Progress,
    /// Appliance console, library and warning messages (what `-v` shows).
    Messages,
}

impl Guestfs {
    /// Create a handle. It reads the usual `LIBGUESTFS_*` environment variables.
    pub fn new() -> Result<Self> {
        // SAFETY: plain constructor; NULL means failure (errno set).
        let handle = unsafe { sys::guestfs_create_flags(0) };
        if handle.is_null() {
            return Err(GuestfsError {
                call: "guestfs_create",
                message: "could not create a libguestfs handle".into(),
                errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            });
        }
        // Errors are returned to the caller as values; stop libguestfs printing them as well.
        // SAFETY: valid handle; a NULL callback disables the default stderr handler.
        unsafe { sys::guestfs_set_error_handler(handle, None, ptr::null_mut()) };
        Ok(Guestfs {
            handle,
            callbacks: Vec::new(),
        })
    }

    fn error(&self, call: &'static str) -> GuestfsError {
        // SAFETY: valid handle; the returned string is owned by the handle, copied at once.
        let (message, errno) = unsafe {
            let m = sys::guestfs_last_error(self.handle);
            let message = if m.is_null() {
                "unknown error (libguestfs gave no message)".to_string()
            } else {
                CStr::from_ptr(m).to_string_lossy().trim_end().to_string()
            };
            (message, sys::guestfs_last_errno(self.handle))
        };
        GuestfsError {
            call,
            message,
            errno,
        }
    }

    fn check(&self, call: &'static str, rc: c_int) -> Result<c_int> {
        if rc == -1 {
            Err(self.error(call))
        } else {
            Ok(rc)
        }
    }

    fn check_string(&self, call: &'static str, p: *mut c_char) -> Result<String> {
        // SAFETY: p is a string returned by libguestfs that we now own.
        unsafe { take_string(p) }.ok_or_else(|| self.error(call))
    }

    fn check_list(&self, call: &'static str, p: *mut *mut c_char) -> Result<Vec<String>> {
        // SAFETY: p is a string list returned by libguestfs that we now own.
        unsafe { take_string_list(p) }.ok_or_else(|| self.error(call))
    }

    /// Register a callback for progress or message events. Lives as long as the handle.
    pub fn on_event(
        &mut self,
        kind: EventKind,
        cb: impl FnMut(Event<'_>) + Send + 'static,
    ) -> Result<()> {
        let mask = match kind {
            EventKind::Progress => sys::GUESTFS_EVENT_PROGRESS as u64,
            EventKind::Messages => {
                (sys::GUESTFS_EVENT_APPLIANCE
                    | sys::GUESTFS_EVENT_LIBRARY
                    | sys::GUESTFS_EVENT_WARNING
                    | sys::GUESTFS_EVENT_TRACE) as u64
            }
        };
        let mut boxed: Box<Callback> = Box::new(Box::new(cb));
        let opaque = &mut *boxed as *mut Callback as *mut c_void;
        // SAFETY: opaque points into `boxed`, which we keep until the handle is closed.
        let rc = unsafe {
            sys::guestfs_set_event_callback(self.handle, Some(event_trampoline), mask, 0, opaque)
        };
        self.check("guestfs_set_event_callback", rc)?;
        self.callbacks.push(boxed);
        Ok(())
    }

    pub fn set_verbose(&mut self, on: bool) -> Result<()> {
        // SAFETY: valid handle.
        let rc = unsafe { sys::guestfs_set_verbose(self.handle, on as c_int) };
        self.check("guestfs_set_verbose", rc).map(drop)
    }

    pub fn set_backend_settings(&mut self, settings: &[impl AsRef<str>]) -> Result<()> {
        let arr = CStrArray::new("guestfs_set_backend_settings", settings)?;
        // SAFETY: valid handle; arr is NULL-terminated and outlives the call.
        let rc = unsafe { sys::guestfs_set_backend_settings(self.handle, arr.as_ptr()) };
        self.check("guestfs_set_backend_settings", rc).map(drop)
    }

    pub fn set_smp(&mut self, vcpus: i32) -> Result<()> {
        // SAFETY: valid handle.
        let rc = unsafe { sys::guestfs_set_smp(self.handle, vcpus) };
        self.check("guestfs_set_smp", rc).map(drop)
    }

    pub fn set_memsize(&mut self, mib: i32) -> Result<()> {
        // SAFETY: valid handle.
        let rc = unsafe { sys::guestfs_set_memsize(self.handle, mib) };
        self.check("guestfs_set_memsize", rc).map(drop)
    }

    pub fn set_identifier(&mut self, id: &str) -> Result<()> {
        let id = cstring("guestfs_set_identifier", id)?;
        // SAFETY: valid handle and string.
        let rc = unsafe { sys::guestfs_set_identifier(self.handle, id.as_ptr()) };
        self.check("guestfs_set_identifier", rc).map(drop)
    }

    /// Attach a disk. For NBD, set `protocol = "nbd"`, `servers = ["unix:/sock"]`, path = export name.
    pub fn add_drive(&mut self, path: &str, opts: &DriveOptions) -> Result<()> {
        const CALL: &str = "guestfs_add_drive_opts";
        let filename = cstring(CALL, path)?;
        let format = opts
            .format
            .as_deref()
            .map(|s| cstring(CALL, s))
            .transpose()?;
        let protocol = opts
            .protocol
            .as_deref()
            .map(|s| cstring(CALL, s))
            .transpose()?;
        let cachemode = opts
            .cachemode
            .as_deref()
            .map(|s| cstring(CALL, s))
            .transpose()?;
        let discard = opts
            .discard
            .as_deref()
            .map(|s| cstring(CALL, s))
            .transpose()?;
        let servers = CStrArray::new(CALL, &opts.servers)?;
        let mut argv = sys::guestfs_add_drive_opts_argv::default();
        if opts.readonly {
            argv.bitmask |= 1u64 << sys::GUESTFS_ADD_DRIVE_OPTS_READONLY;
            argv.readonly = 1;
        }
        if let Some(f) = &format {
            argv.bitmask |= 1u64 << sys::GUESTFS_ADD_DRIVE_OPTS_FORMAT;
            argv.format = f.as_ptr();
        }
        if let Some(p) = &protocol {
            argv.bitmask |= 1u64 << sys::GUESTFS_ADD_DRIVE_OPTS_PROTOCOL;
            argv.protocol = p.as_ptr();
        }
        if !opts.servers.is_empty() {
            argv.bitmask |= 1u64 << sys::GUESTFS_ADD_DRIVE_OPTS_SERVER;
            argv.server = servers.as_ptr();
        }
        if let Some(c) = &cachemode {
            argv.bitmask |= 1u64 << sys::GUESTFS_ADD_DRIVE_OPTS_CACHEMODE;
            argv.cachemode = c.as_ptr();
        }
        if let Some(d) = &discard {
            argv.bitmask |= 1u64 << sys::GUESTFS_ADD_DRIVE_OPTS_DISCARD;
            argv.discard = d.as_ptr();
        }
        // SAFETY: every pointer in argv points into a CString/array alive until the call returns.
        let rc = unsafe { sys::guestfs_add_drive_opts_argv(self.handle, filename.as_ptr(), &argv) };
        self.check(CALL, rc).map(drop)
    }

    pub fn launch(&mut self) -> Result<()> {
        // SAFETY: valid handle.
        let rc = unsafe { sys::guestfs_launch(self.handle) };
        self.check("guestfs_launch", rc).map(drop)
    }

    /// Sync and shut the appliance down cleanly; errors here mean writes may be lost.
    pub fn shutdown(&mut self) -> Result<()> {
        // SAFETY: valid handle.
        let rc = unsafe { sys::guestfs_shutdown(self.handle) };
        self.check("guestfs_shutdown", rc).map(drop)
    }

    /// PID of the appliance's hypervisor process (after launch).
    pub fn pid(&self) -> Result<i32> {
        // SAFETY: valid handle.
        let rc = unsafe { sys::guestfs_get_pid(self.handle) };
        self.check("guestfs_get_pid", rc)
    }
}

/// Generate a method for a call taking string arguments and returning one string.
macro_rules! string_call {
    ($(#[$doc:meta])* $name:ident => $c:ident ( $($arg:ident),* )) => {
        $(#[$doc])*
        pub fn $name(&self, $($arg: &str),*) -> Result<String> {
            const CALL: &str = stringify!($c);
            $(let $arg = cstring(CALL, $arg)?;)*
            // SAFETY: valid handle, NUL-terminated arguments alive for the call.
            let p = unsafe { sys::$c(self.handle, $($arg.as_ptr()),*) };
            self.check_string(CALL, p)
        }
    };
}

/// Generate a method for a call taking string arguments and returning a string list.
macro_rules! list_call {
    ($(#[$doc:meta])* $name:ident => $c:ident ( $($arg:ident),* )) => {
        $(#[$doc])*
        pub fn $name(&self, $($arg: &str),*) -> Result<Vec<String>> {
            const CALL: &str = stringify!($c);
            $(let $arg = cstring(CALL, $arg)?;)*
            // SAFETY: valid handle, NUL-terminated arguments alive for the call.
            let p = unsafe { sys::$c(self.handle, $($arg.as_ptr()),*) };
            self.check_list(CALL, p)
        }
    };
}

/// Generate a method for a call taking string arguments and returning an int status/bool.
macro_rules! int_call {
    ($(#[$doc:meta])* $name:ident => $c:ident ( $($arg:ident),* )) => {
        $(#[$doc])*
        pub fn $name(&self, $($arg: &str),*) -> Result<i32> {
            const CALL: &str = stringify!($c);
            $(let $arg = cstring(CALL, $arg)?;)*
            // SAFETY: valid handle, NUL-terminated arguments alive for the call.
            let rc = unsafe { sys::$c(self.handle, $($arg.as_ptr()),*) };
            self.check(CALL, rc)
        }
    };
}

impl Guestfs {
    list_call!(
        /// Inspect the attached disks; returns the root filesystem of each OS found.
        inspect_os => guestfs_inspect_os()
    );
    string_call!(inspect_get_type => guestfs_inspect_get_type(root));
    string_call!(inspect_get_distro => guestfs_inspect_get_distro(root));
    string_call!(inspect_get_product_name => guestfs_inspect_get_product_name(root));
    int_call!(inspect_get_major_version => guestfs_inspect_get_major_version(root));
    int_call!(inspect_get_minor_version => guestfs_inspect_get_minor_version(root));
    string_call!(inspect_get_arch => guestfs_inspect_get_arch(root));
    string_call!(inspect_get_package_format => guestfs_inspect_get_package_format(root));
    string_call!(inspect_get_package_management => guestfs_inspect_get_package_management(root));
    string_call!(inspect_get_hostname => guestfs_inspect_get_hostname(root));
    string_call!(inspect_get_osinfo => guestfs_inspect_get_osinfo(root));

    /// Mountpoint → device for an inspected root, e.g. ("/", "/dev/sda1").
    pub fn inspect_get_mountpoints(&self, root: &str) -> Result<Vec<(String, String)>> {
        const CALL: &str = "guestfs_inspect_get_mountpoints";
        let root = cstring(CALL, root)?;
        // SAFETY: valid handle and argument.
        let p = unsafe { sys::guestfs_inspect_get_mountpoints(self.handle, root.as_ptr()) };
        self.check_list(CALL, p).map(pairs)
    }

    /// Every filesystem libguestfs can see, with its type ("ext4", "swap", "unknown", …).
    pub fn list_filesystems(&self) -> Result<Vec<(String, String)>> {
        // SAFETY: valid handle.
        let p = unsafe { sys::guestfs_list_filesystems(self.handle) };
        self.check_list("guestfs_list_filesystems", p).map(pairs)
    }

    /// blkid's tags for a device (TYPE, UUID, LABEL, PARTUUID, …).
    pub fn blkid(&self, device: &str) -> Result<Vec<(String, String)>> {
        const CALL: &str = "guestfs_blkid";
        let device = cstring(CALL, device)?;
        // SAFETY: valid handle and argument.
        let p = unsafe { sys::guestfs_blkid(self.handle, device.as_ptr()) };
        self.check_list(CALL, p).map(pairs)
    }

    string_call!(vfs_uuid => guestfs_vfs_uuid(mountable));
    string_call!(vfs_label => guestfs_vfs_label(mountable));
    list_call!(list_partitions => guestfs_list_partitions());
    list_call!(
        /// The attached disks as the appliance names them (/dev/sda, /dev/sdb, …).
        list_devices => guestfs_list_devices()
    );

    int_call!(mount => guestfs_mount(mountable, mountpoint));
    int_call!(
        /// Mount read-only (no journal replay writes reach the disk's overlay either).
        mount_ro => guestfs_mount_ro(mountable, mountpoint)
    );
    list_call!(
        /// Logical volumes as `/dev/VG/LV`.
        lvs => guestfs_lvs()
    );
    string_call!(lvuuid => guestfs_lvuuid(device));
    string_call!(vguuid => guestfs_vguuid(vgname));

    pub fn umount_all(&self) -> Result<()> {
        // SAFETY: valid handle.
        let rc = unsafe { sys::guestfs_umount_all(self.handle) };
        self.check("guestfs_umount_all", rc).map(drop)
    }

    /// Discard unused blocks of the filesystem mounted at `mountpoint`.
    pub fn fstrim(&self, mountpoint: &str) -> Result<()> {
        const CALL: &str = "guestfs_fstrim";
        let mp = cstring(CALL, mountpoint)?;
        let argv = sys::guestfs_fstrim_argv::default();
        // SAFETY: valid handle; empty optargs.
        let rc = unsafe { sys::guestfs_fstrim_argv(self.handle, mp.as_ptr(), &argv) };
        self.check(CALL, rc).map(drop)
    }

    fn bool_call(&self, call: &'static str, rc: c_int) -> Result<bool> {
        self.check(call, rc).map(|v| v != 0)
    }

    pub fn exists(&self, path: &str) -> Result<bool> {
        let p = cstring("guestfs_exists", path)?;
        // SAFETY: valid handle and argument.
        let rc = unsafe { sys::guestfs_exists(self.handle, p.as_ptr()) };
        self.bool_call("guestfs_exists", rc)
    }

    pub fn is_file(&self, path: &str) -> Result<bool> {
        let p = cstring("guestfs_is_file", path)?;
        // SAFETY: valid handle and argument.
        let rc = unsafe { sys::guestfs_is_file(self.handle, p.as_ptr()) };
        self.bool_call("guestfs_is_file", rc)
    }

    pub fn is_dir(&self, path: &str) -> Result<bool> {
        let p = cstring("guestfs_is_dir", path)?;
        // SAFETY: valid handle and argument.
        let rc = unsafe { sys::guestfs_is_dir(self.handle, p.as_ptr()) };
        self.bool_call("guestfs_is_dir", rc)
    }

    list_call!(ls => guestfs_ls(directory));
    list_call!(glob_expand => guestfs_glob_expand(pattern));
    string_call!(readlink => guestfs_readlink(path));
    string_call!(realpath => guestfs_realpath(path));
    int_call!(rm => guestfs_rm(path));
    int_call!(mkdir_p => guestfs_mkdir_p(path));
    int_call!(rm_f => guestfs_rm_f(path));
    int_call!(mv => guestfs_mv(src, dest));
    int_call!(cp => guestfs_cp(src, dest));
    int_call!(ln_sf => guestfs_ln_sf(target, linkname));

    /// The `size` bytes libguestfs returned at `buf` (a call's result), copied and freed; the
    /// handle's error when `buf` is null.
    fn take_buffer(&self, call: &'static str, buf: *mut c_char, size: usize) -> Result<Vec<u8>> {
        if buf.is_null() {
            return Err(self.error(call));
        }
        // SAFETY: buf holds `size` bytes allocated by libguestfs; copied then freed.
        let out = unsafe {
            let v = std::slice::from_raw_parts(buf as *const u8, size).to_vec();
            libc::free(buf as *mut c_void);
            v
        };
        Ok(out)
    }

    /// Whole file contents as bytes (no size limit beyond libguestfs's message size).
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        const CALL: &str = "guestfs_read_file";
        let p = cstring(CALL, path)?;
        let mut size: usize = 0;
        // SAFETY: valid handle; size_r receives the buffer length.
        let buf = unsafe { sys::guestfs_read_file(self.handle, p.as_ptr(), &mut size) };
        self.take_buffer(CALL, buf, size)
    }

    /// At most `count` bytes of a guest file from its start (following symlinks inside the
    /// guest): small files read without trusting their size.
    pub fn read_head(&self, path: &str, count: u32) -> Result<Vec<u8>> {
        const CALL: &str = "guestfs_pread";
        let p = cstring(CALL, path)?;
        let count = c_int::try_from(count).unwrap_or(c_int::MAX);
        let mut size: usize = 0;
        // SAFETY: valid handle; size_r receives the buffer length.
        let buf = unsafe { sys::guestfs_pread(self.handle, p.as_ptr(), count, 0, &mut size) };
        self.take_buffer(CALL, buf, size)
    }

    /// Size in bytes of a guest file (following symlinks inside the guest).
    pub fn filesize(&self, path: &str) -> Result<u64> {
        const CALL: &str = "guestfs_filesize";
        let p = cstring(CALL, path)?;
        // SAFETY: valid handle and argument.
        let size = unsafe { sys::guestfs_filesize(self.handle, p.as_ptr()) };
        u64::try_from(size).map_err(|_| self.error(CALL))
    }

    /// Copy a guest file to a host file (streamed; no message-size limit).
    pub fn download(&self, remote: &str, local: &std::path::Path) -> Result<()> {
        const CALL: &str = "guestfs_download";
        let r = cstring(CALL, remote)?;
        let l = cstring(CALL, &local.to_string_lossy())?;
        // SAFETY: valid handle and arguments.
        let rc = unsafe { sys::guestfs_download(self.handle, r.as_ptr(), l.as_ptr()) };
        self.check(CALL, rc).map(drop)
    }

    /// Copy a host file into the guest (streamed; no message-size limit).
    pub fn upload(&self, local: &std::path::Path, remote: &str) -> Result<()> {
        const CALL: &str = "guestfs_upload";
        let l = cstring(CALL, &local.to_string_lossy())?;
        let r = cstring(CALL, remote)?;
        // SAFETY: valid handle and arguments.
        let rc = unsafe { sys::guestfs_upload(self.handle, l.as_ptr(), r.as_ptr()) };
        self.check(CALL, rc).map(drop)
    }

    /// File contents as text (lossy UTF-8).
    pub fn read_to_string(&self, path: &str) -> Result<String> {
        self.read_file(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// Create or replace a file with `content`.
    pub fn write(&self, path: &str, content: &[u8]) -> Result<()> {
        const CALL: &str = "guestfs_write";
        let p = cstring(CALL, path)?;
        // SAFETY: valid handle; content pointer/length describe a live slice.
        let rc = unsafe {
            sys::guestfs_write(
                self.handle,
                p.as_ptr(),
                content.as_ptr() as *const c_char,
                content.len(),
            )
        };
        self.check(CALL, rc).map(drop)
    }

    pub fn chmod(&self, mode: i32, path: &str) -> Result<()> {
        let p = cstring("guestfs_chmod", path)?;
        // SAFETY: valid handle and argument.
        let rc = unsafe { sys::guestfs_chmod(self.handle, mode, p.as_ptr()) };
        self.check("guestfs_chmod", rc).map(drop)
    }

    /// Run a guest binary inside the appliance, chrooted into the mounted guest (`/sysroot`).
    /// Returns its stdout; a non-zero exit is an error carrying its stderr.
    pub fn command(&self, argv: &[impl AsRef<str>]) -> Result<String> {
        let arr = CStrArray::new("guestfs_command", argv)?;
        // SAFETY: valid handle; NULL-terminated argv alive for the call.
        let p = unsafe { sys::guestfs_command(self.handle, arr.as_ptr()) };
        self.check_string("guestfs_command", p)
    }

    /// Run `/bin/sh -c CMD` in the guest (as [`Guestfs::command`]).
    pub fn sh(&self, cmd: &str) -> Result<String> {
        let c = cstring("guestfs_sh", cmd)?;
        // SAFETY: valid handle and argument.
        let p = unsafe { sys::guestfs_sh(self.handle, c.as_ptr()) };
        self.check_string("guestfs_sh", p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_call_returns_libguestfs_message() {
        let g = Guestfs::new().expect("handle");
        // No appliance launched: libguestfs refuses and says why.
        let err = g.exists("/etc").unwrap_err();
        assert_eq!(err.call, "guestfs_exists");
        assert!(
            err.message
                .contains("call launch before using this function"),
            "unexpected message: {}",
            err.message
        );
        assert!(err.to_string().starts_with("guestfs_exists: "));
    }

    #[test]
    fn add_drive_of_missing_file_names_the_file() {
        let mut g = Guestfs::new().expect("handle");
        let err = g
            .add_drive(
                "/nonexistent/h2k-test.img",
                &DriveOptions {
                    readonly: true,
                    format: Some("raw".into()),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(
            err.message.contains("/nonexistent/h2k-test.img"),
            "{}",
            err.message
        );
    }

    #[test]
    fn bad_option_value_is_an_error_not_a_panic() {
        let mut g = Guestfs::new().expect("handle");
        let err = g.set_memsize(-5).unwrap_err();
        assert_eq!(err.call, "guestfs_set_memsize");
        assert!(!err.message.is_empty());
    }

    #[test]
    fn nul_in_argument_is_rejected_before_c() {
        let g = Guestfs::new().expect("handle");
        let err = g.exists("/etc\0passwd").unwrap_err();
        assert_eq!(err.errno, libc::EINVAL);
        assert!(err.message.contains("NUL"));
    }

    #[test]
    fn pairs_groups_hash_lists() {
        let v = vec![
            "/".into(),
            "/dev/sda1".into(),
            "/boot".into(),
            "/dev/sda2".into(),
        ];
        assert_eq!(
            pairs(v),
            vec![
                ("/".to_string(), "/dev/sda1".to_string()),
                ("/boot".to_string(), "/dev/sda2".to_string())
            ]
        );
    }
}

//! glibc malloc settings for a long-running server, and handing memory
//! freed after a burst back to the kernel. Nothing here changes what is
//! allocated, only how much of what was freed stays resident. On other
//! C libraries these do nothing.

/// Set once, before any thread starts (`main`'s serve). (mimalloc was
/// tried instead: higher RSS throughout.)
///
/// - Two arenas instead of 8 per core: with the default, memory freed after
///   each fleet-wide push stayed fragmented across per-thread arenas (server
///   RSS grew ~9 KiB per collector per push with 2,000 simulated
///   collectors; ~2 KiB with two arenas, levelling off).
/// - A fixed mmap threshold of 1 MiB: blocks that large (an argon2 password
///   hash takes 19 MiB per login) get their own mapping and go back to the
///   kernel when freed. glibc's default threshold adapts upwards after the
///   first such free, so every later login's 19 MiB came from an arena and
///   stayed resident: each arena that ever hashed a password held ~19.5 MiB
///   more (measured: +19.5 MiB RSS after the first and again after the
///   second login of an idle server; with the fixed threshold +0.3 MiB).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

/// Give the free pages inside malloc's arenas back to the kernel. After an
/// APPLIED storm the statuses queued for the writer (each with its
/// collector's reported config bodies) are freed, but glibc keeps freed
/// memory between live blocks resident: with 5,000 collectors, trimming
/// after five pushes took RSS from 371 to 346 MiB (5 KiB per collector).
/// It walks each arena under that arena's lock (milliseconds for hundreds
/// of MiB), so it is called from a blocking thread, after a burst, when
/// the writer has gone quiet, never per message.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory; no block is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

//! Giving freed memory back to the operating system.
//!
//! glibc's allocator keeps memory that was freed for reuse: after a few requests of tens
//! of megabytes, the daemon would stay at their peak RSS while idle. `malloc_trim(0)`
//! returns the free pages of every arena (not only the top of the heap). Other
//! allocators and platforms return memory on their own, or not at all; there it does
//! nothing.

/// Sets the allocator up for a daemon that sometimes holds large request bodies: blocks
/// of 1 MiB and more are mapped on their own and unmapped when freed, instead of the
/// threshold that glibc raises after each large free (up to 32 MiB), which would keep
/// such bodies in the heap. Call it once, before the runtime starts.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and changes only the allocator's settings; it
    // is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Returns the allocator's free memory to the OS. Costs about a millisecond on a large
/// heap: call it after large requests, not per request.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only walks the allocator's own state
    // under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

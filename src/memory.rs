//! Giving freed memory back to the operating system.
//!
//! glibc's allocator keeps memory that was freed for reuse: after a few requests of tens
//! of megabytes, the daemon would stay at their peak RSS while idle. `malloc_trim(0)`
//! returns the free pages of every arena (not only the top of the heap). Other
//! allocators and platforms return memory on their own, or not at all; there it does
//! nothing.

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

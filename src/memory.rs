//! Giving freed memory back to the operating system.
//!
//! glibc's allocator keeps memory that was freed for reuse: after a few requests of tens
//! of megabytes, the daemon would stay at their peak RSS while idle. `malloc_trim(0)`
//! returns the free pages of every arena (not only the top of the heap). Other
//! allocators and platforms return memory on their own, or not at all; there it does
//! nothing.

/// Sets the allocator up for a daemon that sometimes holds large request bodies: blocks
/// of [`MMAP_THRESHOLD`] and more are mapped on their own and unmapped when freed,
/// instead of the threshold that glibc raises after each large free (up to 32 MiB, with
/// twice that kept at the top of each arena), which would keep such bodies in the heap.
/// Call it once, before the runtime starts.
///
/// Fixing one threshold turns off glibc's adjustment of both, so both are set. Each was
/// measured on the load generator (docs/benchmarks.md): the trim threshold left at
/// glibc's 128 KiB gave each request's memory back at its free and faulted it in zeroed
/// at the next request (OTLP/gRPC throughput 7% under the daemon without these
/// settings); a mapping threshold of 1 MiB did the same to every body of a
/// Collector-sized batch (8192 spans, about 3 MB).
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and changes only the allocator's settings; it
    // is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
    }
}

/// Blocks at least this large are mapped on their own, and unmapped when freed: half
/// of the in-flight peak after which [`release_free_memory`] runs
/// (`ingest::RELEASE_AFTER_BYTES`), so a body that size is given back either way.
pub const MMAP_THRESHOLD: usize = 16 << 20;

/// Free memory at the top of an arena beyond this is given back when a block is freed:
/// a few Collector-sized requests' worth, so steady traffic reuses its pages. With one
/// arena per thread that decodes or serves, what stays mapped at idle is bounded; what
/// large requests leave below the top goes back by [`release_free_memory`].
pub const TRIM_THRESHOLD: usize = 8 << 20;

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

/// Bytes of rendered responses (`/metrics`, status pages) freed since memory was last
/// given back for them ([`take_rendered_much`]).
static RENDERED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Once responses of this many bytes have been rendered and freed since memory was last
/// given back, the tick gives it back ([`release_free_memory`]): a scrape of many
/// series renders megabytes of text that are free again once its client has taken
/// them, and the allocator would otherwise keep the largest such render resident (a
/// few KiB per (SLO, region) series, docs/benchmarks.md) for the rest of the daemon's
/// life.
pub const RELEASE_AFTER_RENDERED: usize = 4 << 20;

/// Counts a rendered response of `bytes` that has just been freed.
pub fn note_rendered(bytes: usize) {
    RENDERED.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// True, and the count starts again, once [`RELEASE_AFTER_RENDERED`] bytes of rendered
/// responses have been freed since it last was.
pub fn take_rendered_much() -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    RENDERED.load(Relaxed) >= RELEASE_AFTER_RENDERED && {
        RENDERED.store(0, Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_are_given_back_once_enough_of_them_were_freed() {
        // Other tests' responses count too, but only a few bytes each.
        while take_rendered_much() {}
        note_rendered(RELEASE_AFTER_RENDERED);
        assert!(take_rendered_much());
        assert!(!take_rendered_much(), "the count starts again");
    }
}

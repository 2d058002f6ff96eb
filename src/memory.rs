//! Giving freed memory back to the operating system, and backing the heap with huge
//! pages.
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

/// Keeps every thread of the process on glibc's main heap (`M_ARENA_MAX` 1), the heap
/// that [`use_huge_pages`] backs with huge pages, and notes where that heap starts;
/// [`use_huge_pages`] does nothing until this has run. The daemon's hot path allocates
/// nothing, so its threads rarely meet on the heap's lock; with an arena per thread the
/// series would be spread over heaps `use_huge_pages` does not know of. Call it once,
/// before any other thread starts, in a process that runs only the daemon: a process
/// whose threads allocate at a high rate (the load generator's client and its prost
/// baseline) would queue on that one lock.
pub fn one_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and changes only the allocator's settings, and
    // sbrk(0) only reads the current break; this is called before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        HUGE.heap_start
            .store(libc::sbrk(0) as usize, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The size of a transparent huge page on x86-64 and most arm64 kernels.
pub const HUGE_PAGE: usize = 2 << 20;

/// What [`use_huge_pages`] has done so far.
struct HugeHeap {
    /// The break when [`one_heap`] ran: where the heap's growth starts.
    heap_start: std::sync::atomic::AtomicUsize,
    /// The end of the heap range already collapsed into huge pages.
    collapsed_to: std::sync::atomic::AtomicUsize,
}

static HUGE: HugeHeap = HugeHeap {
    heap_start: std::sync::atomic::AtomicUsize::new(0),
    collapsed_to: std::sync::atomic::AtomicUsize::new(0),
};

/// Asks the kernel to back the part of the heap that has grown since the last call (up
/// to its free top) with transparent huge pages (`MADV_COLLAPSE`, Linux 6.1 and later), and returns
/// how many bytes it asked for (0 when the heap has not grown by a whole huge page,
/// before [`one_heap`], and on other platforms). The tick calls it once a second.
///
/// The series, their histograms and the request buffers live in this heap: 20 MB and
/// more under load, read at random. With 4 KiB pages nearly every series lookup also
/// missed the TLB; with huge pages the daemon spent 11% less CPU per span over gRPC
/// (docs/benchmarks.md, "Huge pages for the heap"). The collapse is asked for only for
/// memory the heap already holds, and the heap is not marked for the kernel's
/// background collapsing, so what [`release_free_memory`] gives back stays given back.
/// Errors (an older kernel, huge pages turned off with `never`) are ignored: the pages
/// stay small.
pub fn use_huge_pages() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::atomic::Ordering::Relaxed;
        let start = HUGE.heap_start.load(Relaxed);
        if start == 0 {
            return 0;
        }
        // The free space at the top of the heap (up to the trim threshold, 8 MiB) is
        // left out: collapsing it would make it resident.
        // SAFETY: sbrk(0) only reads the current break; mallinfo2 reads the allocator's
        // statistics under its lock.
        let end = unsafe { (libc::sbrk(0) as usize).saturating_sub(libc::mallinfo2().keepcost) };
        let from = start
            .max(HUGE.collapsed_to.load(Relaxed))
            .next_multiple_of(HUGE_PAGE);
        let to = end / HUGE_PAGE * HUGE_PAGE;
        // A heap that shrank below what was collapsed starts again from its end.
        HUGE.collapsed_to.store(to.max(start), Relaxed);
        if to <= from {
            return 0;
        }
        // SAFETY: madvise only changes how the kernel backs these pages, never their
        // contents; the range lies inside the heap (between its first break and the
        // current one, both rounded inward to whole huge pages), and a part the heap no
        // longer maps makes the call fail, nothing more.
        unsafe {
            libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_COLLAPSE);
        }
        return to - from;
    }
    #[allow(unreachable_code)]
    0
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

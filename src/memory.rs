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
    {
        // Transparent huge pages turned off for the whole system are off for sloxide
        // too (MADV_COLLAPSE itself would ignore the setting).
        let never = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|mode| mode.contains("[never]"));
        // SAFETY: mallopt takes two integers and changes only the allocator's settings,
        // and sbrk(0) only reads the current break; this is called before any other
        // thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            if !never {
                HUGE.heap_start
                    .store(libc::sbrk(0) as usize, std::sync::atomic::Ordering::Relaxed);
            }
        }
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

/// Asks the kernel to back the part of the heap that has grown since the last call
/// with transparent huge pages (`MADV_COLLAPSE`, Linux 6.1 and later), one 2 MiB
/// region at a time and only where at least half of the region's pages are already
/// resident, and returns how many bytes it asked for (0 when nothing new qualifies,
/// before [`one_heap`], with transparent huge pages set to `never`, and on other
/// platforms). The tick calls it once a second, before it gives free memory back.
///
/// The series, their histograms and the request buffers live in this heap: 20 MB and
/// more under load, read at random. With 4 KiB pages nearly every series lookup also
/// missed the TLB; with huge pages the daemon spent 12% less CPU per span over gRPC
/// (docs/benchmarks.md, "What bounds the pipeline"). A collapse fills a region's
/// missing pages: a region whose pages are mostly not resident (free memory never
/// touched, or given back by [`release_free_memory`] after a burst) is left on small
/// pages (near the heap's top, where it may still fill up, it is looked at again on the
/// next call), so a collapse at most doubles what a region already held (the minute histograms are allocated zeroed and touched only where
/// durations fall, so their regions are rarely all resident). The heap is not marked
/// for the kernel's background collapsing, which would fill regions of a single
/// resident page. Errors (an older kernel) are ignored: the pages stay small.
pub fn use_huge_pages() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::atomic::Ordering::Relaxed;
        let start = HUGE.heap_start.load(Relaxed);
        if start == 0 {
            return 0;
        }
        // SAFETY: sbrk(0) only reads the current break.
        let end = unsafe { libc::sbrk(0) } as usize;
        let mut at = start
            .max(HUGE.collapsed_to.load(Relaxed))
            .next_multiple_of(HUGE_PAGE);
        let mut asked = 0;
        let mut resident = [0u8; HUGE_PAGE / 4096];
        // At most 64 regions (128 MiB) a call, so that one tick stays short.
        for _ in 0..64 {
            if at + HUGE_PAGE > end {
                break;
            }
            let region = at as *mut libc::c_void;
            // SAFETY: mincore writes one byte per 4 KiB page of the range into
            // `resident`, which has exactly that many; the range lies in the heap (from
            // its first break to the current one), and if the heap shrank meanwhile the
            // call fails and writes nothing.
            let ok = unsafe { libc::mincore(region, HUGE_PAGE, resident.as_mut_ptr()) } == 0;
            if !ok {
                break;
            }
            if resident.iter().filter(|r| *r & 1 == 1).count() >= resident.len() / 2 {
                // SAFETY: madvise only changes how the kernel backs these pages, never
                // their contents; the range is whole pages of the heap (see above).
                unsafe {
                    libc::madvise(region, HUGE_PAGE, libc::MADV_COLLAPSE);
                }
                asked += HUGE_PAGE;
            } else if at + HUGE_PAGE + TRIM_THRESHOLD > end {
                // Near the top, where the heap is still filling up: looked at again on
                // the next call.
                break;
            }
            // Below it, a region mostly not resident is memory given back or never
            // used: it stays on small pages.
            at += HUGE_PAGE;
        }
        // The next call starts where this one stopped; a heap that shrank starts again
        // from its end.
        HUGE.collapsed_to.store(at.min(end).max(start), Relaxed);
        return asked;
    }
    #[allow(unreachable_code)]
    0
}

/// Blocks at least this large are mapped on their own, and unmapped when freed: half
/// of the in-flight peak after which [`release_free_memory`] runs
/// (`ingest::RELEASE_AFTER_BYTES`), so a body that size is given back either way.
pub const MMAP_THRESHOLD: usize = 16 << 20;

/// Free memory at the top of an arena beyond this is given back when a block is freed:
/// a few Collector-sized requests' worth, so steady traffic reuses its pages. The
/// daemon has one arena ([`one_heap`]), so what stays mapped at idle is bounded by it;
/// what large requests leave below the top goes back by [`release_free_memory`].
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

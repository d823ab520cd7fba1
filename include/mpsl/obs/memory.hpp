// Memory and CPU use of this process, for --dry-run checks and the rank_summary metrics.
#pragma once

#include <cstdint>
#include <string>

namespace mpsl::obs {

// Peak resident set size so far, in bytes (getrusage: ru_maxrss is KiB on Linux).
int64_t peak_rss_bytes();

// CPU seconds this process has used so far, user and system, all threads (getrusage).
double process_cpu_seconds();

// Current resident set size in bytes (/proc/self/statm); 0 when it cannot be read.
int64_t current_rss_bytes();

// Memory the host can still give processes without swapping (/proc/meminfo MemAvailable), in
// bytes; -1 when it cannot be read.
int64_t available_memory_bytes();

// Bytes the process holds from malloc right now (glibc mallinfo2: in-use arena chunks plus
// mmapped blocks). Everything mpsl and oneDNN allocate goes through it, so differences of this
// figure measure what a piece of training state costs, without the noise of page residency.
int64_t heap_in_use_bytes();

// The training's own tracked peak: the largest heap_in_use_bytes() seen by note_heap() calls
// (the runtimes call it after every task). note_heap() returns the current figure.
int64_t note_heap();
int64_t tracked_peak_bytes();

// Hands the heap's free pages back to the kernel (glibc malloc_trim). Reading data, building
// programs and states and restoring checkpoints leave freed memory that glibc keeps resident;
// the trainers call this before building their programs and again before training, so a rank's
// RSS is what its training holds (measured: a vgg19 stage of units 8-13, K = 2, peaked at
// 420 MiB without and 346 MiB with it). Not after every round: it lowered no peak (large
// buffers such as a big part's FedAvg sums are mmapped and go back when freed), and it made the
// next round fault its pages in again (about 930 page faults per round for an fmnist-cnn stage).
void release_free_heap();

// Parses "512", "64K", "1.5G", "4GiB", "300MB" (binary units: K = 1024) into bytes; returns
// -1 when the text is not such a size.
int64_t parse_bytes(const std::string& text);

// "512 B", "3.0 KiB", "1.25 GiB": binary units, three significant digits.
std::string format_bytes(int64_t bytes);

}  // namespace mpsl::obs

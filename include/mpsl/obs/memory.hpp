// Memory use of this process, for --dry-run checks and the rank_summary metrics.
#pragma once

#include <cstdint>
#include <string>

namespace mpsl::obs {

// Peak resident set size so far, in bytes (getrusage: ru_maxrss is KiB on Linux).
int64_t peak_rss_bytes();

// Current resident set size in bytes (/proc/self/statm); 0 when it cannot be read.
int64_t current_rss_bytes();

// "512 B", "3.0 KiB", "1.25 GiB": binary units, three significant digits.
std::string format_bytes(int64_t bytes);

}  // namespace mpsl::obs

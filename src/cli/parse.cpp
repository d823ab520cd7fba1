// Parsing of `mpsl <command> [options]` and of --config INI files.
//
// Each command's options are a table of Specs bound to the fields of one ParsedCommand. Boost
// reads the command line (every value as text), a small INI reader reads the config file (so
// errors can name the line), and the Spec setters convert and check each value, so messages
// read the same whichever source a value came from.
#include "mpsl/cli/parse.hpp"

#include <algorithm>
#include <boost/program_options.hpp>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <sstream>
#include <system_error>
#include <type_traits>

#include "mpsl/core/error.hpp"

#ifndef MPSL_VERSION
#define MPSL_VERSION "unknown"
#endif

namespace mpsl::cli {
namespace {

namespace po = boost::program_options;

// ---------------------------------------------------------------------------------------------
// Small text helpers

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += sep;
    out += items[i];
  }
  return out;
}

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

// Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of two
// neighbours ("trian" -> "train") each cost 1.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

// The closest candidate when it is close enough to be a plausible typo, else "".
std::string closest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::numeric_limits<size_t>::max();
  for (const auto& c : candidates) {
    size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  size_t limit = std::max<size_t>(1, std::min(word.size(), best.size()) / 3);
  return best_d <= limit ? best : "";
}

std::string shortest(float v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::general);
  return std::string(buf, r.ptr);
}

// ---------------------------------------------------------------------------------------------
// Option specs

// Where a value came from, appended to error messages: "" for the command line.
struct Origin {
  std::string suffix;
};

struct Spec {
  std::string name;        // long name without "--"
  std::string value_name;  // "N", "FILE", ...; empty for a flag
  std::string group;       // help section
  std::string help;        // one line
  std::string shown_default;
  bool cli_only = false;  // --config, --help, --version: not accepted inside a config file
  bool hidden = false;    // not listed in help (positional arguments)
  std::function<void(const std::string& text, const Origin& origin)> set;
};

[[noreturn]] void bad_value(const std::string& name, const std::string& expected,
                            const std::string& got, const Origin& origin) {
  throw InputError("--" + name + " must be " + expected + ", got '" + got + "'" + origin.suffix);
}

bool parse_bool(const std::string& text, bool& out) {
  std::string t = text;
  std::transform(t.begin(), t.end(), t.begin(), [](unsigned char c) { return std::tolower(c); });
  if (t == "" || t == "true" || t == "yes" || t == "on" || t == "1") return out = true, true;
  if (t == "false" || t == "no" || t == "off" || t == "0") return out = false, true;
  return false;
}

template <class Int>
std::string int_expectation(Int min) {
  std::string what = min == 1   ? "a positive integer"
                     : min == 0 ? "a non-negative integer"
                                : "an integer >= " + std::to_string(min);
  return what;
}

template <class Int>
Int parse_integer(const std::string& name, const std::string& text, Int min, const Origin& origin) {
  Int value{};
  const char* first = text.data();
  const char* last = first + text.size();
  auto [ptr, ec] = std::from_chars(first, last, value);
  if (ec == std::errc::result_out_of_range)
    bad_value(
        name,
        int_expectation(min) + " no larger than " + std::to_string(std::numeric_limits<Int>::max()),
        text, origin);
  if (ec != std::errc() || ptr != last || text.empty() || value < min)
    bad_value(name, int_expectation(min), text, origin);
  return value;
}

enum class Range { kPositive, kNonNegative, kUnitOpen /* [0, 1) */ };

float parse_number(const std::string& name, const std::string& text, Range range,
                   const Origin& origin) {
  const char* expected = range == Range::kPositive      ? "a positive number"
                         : range == Range::kNonNegative ? "a non-negative number"
                                                        : "a number in [0, 1)";
  float value = 0;
  const char* first = text.data();
  const char* last = first + text.size();
  auto [ptr, ec] = std::from_chars(first, last, value);
  if (ec != std::errc() || ptr != last || text.empty() || !std::isfinite(value))
    bad_value(name, expected, text, origin);
  bool ok = range == Range::kPositive      ? value > 0
            : range == Range::kNonNegative ? value >= 0
                                           : (value >= 0 && value < 1);
  if (!ok) bad_value(name, expected, text, origin);
  return value;
}

class SpecList {
 public:
  void group(std::string g) { group_ = std::move(g); }

  void flag(const std::string& name, bool& target, const std::string& help) {
    add(name, "", help, "", [&target, name](const std::string& t, const Origin& o) {
      if (!parse_bool(t, target)) bad_value(name, "true or false", t, o);
    });
  }

  void text(const std::string& name, std::string& target, const std::string& value_name,
            const std::string& help) {
    add(name, value_name, help, target,
        [&target](const std::string& t, const Origin&) { target = t; });
  }

  void choice(const std::string& name, std::string& target, std::vector<std::string> choices,
              const std::string& help) {
    std::string shown = join(choices, "|");
    add(name, shown, help, target,
        [&target, name, choices, shown](const std::string& t, const Origin& o) {
          if (std::find(choices.begin(), choices.end(), t) == choices.end())
            bad_value(name, "one of " + shown, t, o);
          target = t;
        });
  }

  template <class Int>
  void integer(const std::string& name, Int& target, Int min, const std::string& value_name,
               const std::string& help) {
    add(name, value_name, help, std::to_string(target),
        [&target, name, min](const std::string& t, const Origin& o) {
          target = parse_integer<Int>(name, t, min, o);
        });
  }

  void number(const std::string& name, float& target, Range range, const std::string& help) {
    add(name, "X", help, shortest(target),
        [&target, name, range](const std::string& t, const Origin& o) {
          target = parse_number(name, t, range, o);
        });
  }

  // An option with its own conversion (`set` throws InputError via bad_value).
  void custom(const std::string& name, const std::string& value_name, const std::string& help,
              const std::string& shown_default,
              std::function<void(const std::string&, const Origin&)> set) {
    add(name, value_name, help, shown_default, std::move(set));
  }

  void cli_only(const std::string& name, const std::string& help) {
    add(name, "", help, "", [](const std::string&, const Origin&) {});
    specs_.back().cli_only = true;
  }

  void positional(const std::string& name, std::string& target) {
    text(name, target, "PATH", "");
    specs_.back().hidden = true;
    specs_.back().cli_only = true;
  }

  std::vector<Spec>& specs() { return specs_; }
  const Spec* find(const std::string& name) const {
    for (const auto& s : specs_)
      if (s.name == name) return &s;
    return nullptr;
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& s : specs_)
      if (!s.hidden) out.push_back(s.name);
    return out;
  }

 private:
  void add(const std::string& name, const std::string& value_name, const std::string& help,
           const std::string& shown_default,
           std::function<void(const std::string&, const Origin&)> set) {
    Spec s;
    s.name = name;
    s.value_name = value_name;
    s.group = group_;
    s.help = help;
    s.shown_default = shown_default;
    s.set = std::move(set);
    specs_.push_back(std::move(s));
  }

  std::string group_;
  std::vector<Spec> specs_;
};

// ---------------------------------------------------------------------------------------------
// The commands and their options

struct CommandInfo {
  const char* name;
  const char* summary;
  const char* usage;
  bool available;
};

const std::vector<CommandInfo>& command_table() {
  static const std::vector<CommandInfo> table = {
      {"train", "train a model: in one process, or split over the ranks of mpirun/srun",
       "mpirun -n R mpsl train --model NAME --data TRAIN.h5 [--test-data TEST.h5] [options]", true},
      {"eval", "evaluate a saved model or a checkpoint on a test set",
       "mpsl eval --model-file FILE.h5 | --checkpoint DIR  --test-data TEST.h5 [options]", true},
      {"convert", "convert Fashion-MNIST or CIFAR-10 to the HDF5 file mpsl trains from",
       "mpsl convert --format fashion-mnist|cifar10 [--input PATH] --output FILE.h5 "
       "[--split train|test]",
       true},
      {"profile", "time and size each unit of a model, as input for plan",
       "mpsl profile --model NAME --batch N [--micro-batches M] [--repeats R] [--min-time S] "
       "[--device SPEC] "
       "--output PROFILE\n       mpsl profile --from PROFILE (--device SPEC | --retime) --output "
       "PROFILE",
       true},
      {"plan", "choose the split points for owners and stages from a profile",
       "mpsl plan --profile PROFILE --owners K --stages N [--node-memory ...] "
       "[--node-speed ...] --output PLAN",
       true},
      {"inspect", "describe a checkpoint, model file, plan or profile, or a zoo model",
       "mpsl inspect PATH | --model NAME [--batch N]", true},
  };
  return table;
}

const CommandInfo* find_command(const std::string& name) {
  for (const auto& c : command_table())
    if (name == c.name) return &c;
  return nullptr;
}

std::string command_list() {
  return join(command_names(), " ");
}

void add_common(SpecList& s, CommonOptions& c) {
  s.group("Common options");
  s.text("config", c.config, "FILE",
         "INI file with the same long names; [command] sections; the command line wins");
  s.specs().back().cli_only = true;
  s.integer<uint64_t>("seed", c.seed, 0, "N", "seed of every random stream");
  s.integer("threads", c.threads, 0, "N", "oneDNN/OpenMP threads per rank (0 = OpenMP default)");
  s.text("metrics", c.metrics, "FILE", "write JSON-lines metrics to FILE (rank 0)");
  s.choice("log-level", c.log_level, {"error", "warn", "info", "debug"}, "how much to log");
  s.flag("quiet", c.quiet, "log warnings and errors only");
  s.cli_only("help", "print this help and exit");
  s.cli_only("version", "print the version and exit");
}

// --checkpoint-every: "N" or "Nrounds", "Nsteps", "Ns" / "Nm" / "Nh" (seconds, minutes, hours).
void parse_checkpoint_every(const std::string& text, TrainOptions& t, const Origin& origin) {
  const std::string expected =
      "N or Nrounds (rounds), Nsteps (steps into a round) or Ns, Nm, Nh (wall clock), e.g. 2, "
      "50steps, 600s";
  const size_t digits_end = text.find_first_not_of("0123456789.");
  const std::string number = text.substr(0, digits_end);
  const std::string unit = digits_end == std::string::npos ? "" : text.substr(digits_end);
  t.checkpoint_every = 0;
  t.checkpoint_every_steps = 0;
  t.checkpoint_every_seconds = 0;
  t.checkpoint_every_text = text;
  if (number.empty()) bad_value("checkpoint-every", expected, text, origin);
  if (unit.empty() || unit == "rounds" || unit == "round") {
    t.checkpoint_every = parse_integer<int>("checkpoint-every", number, 0, origin);
  } else if (unit == "steps" || unit == "step") {
    t.checkpoint_every_steps = parse_integer<int64_t>("checkpoint-every", number, 1, origin);
  } else if (unit == "s" || unit == "sec" || unit == "m" || unit == "min" || unit == "h") {
    float v = 0;
    auto [ptr, ec] = std::from_chars(number.data(), number.data() + number.size(), v);
    if (ec != std::errc() || ptr != number.data() + number.size() || !(v > 0))
      bad_value("checkpoint-every", expected, text, origin);
    const double scale = unit[0] == 'h' ? 3600.0 : unit[0] == 'm' ? 60.0 : 1.0;
    t.checkpoint_every_seconds = v * scale;
  } else {
    bad_value("checkpoint-every", expected, text, origin);
  }
}

// --stall-warn / --stall-abort: "off" (or 0), or a duration: N or Ns (seconds), Nm, Nh.
double parse_duration_or_off(const std::string& name, const std::string& text,
                             const Origin& origin) {
  const std::string expected = "off or a duration in seconds (N, Ns, Nm, Nh), e.g. 60 or 2m";
  if (text == "off" || text == "0") return 0;
  const size_t digits_end = text.find_first_not_of("0123456789.");
  const std::string number = text.substr(0, digits_end);
  const std::string unit = digits_end == std::string::npos ? "" : text.substr(digits_end);
  double v = 0;
  auto [ptr, ec] = std::from_chars(number.data(), number.data() + number.size(), v);
  if (number.empty() || ec != std::errc() || ptr != number.data() + number.size() || !(v > 0) ||
      !std::isfinite(v))
    bad_value(name, expected, text, origin);
  if (unit.empty() || unit == "s") return v;
  if (unit == "m" || unit == "min") return v * 60;
  if (unit == "h") return v * 3600;
  bad_value(name, expected, text, origin);
}

void add_train(SpecList& s, TrainOptions& t) {
  s.group("Model and data");
  s.text("model", t.model, "NAME",
         "zoo model: fmnist-cnn lenet5 vgg11 vgg16 vgg19 resnet18 resnet101");
  s.text("data", t.data, "TRAIN.h5", "training set (made by 'mpsl convert')");
  s.text("test-data", t.test_data, "TEST.h5", "test set, evaluated after each round");
  s.flag("synthetic", t.synthetic, "train on random data of the model's input shape (benchmarks)");
  s.integer<int64_t>("synthetic-count", t.synthetic_count, 1, "N", "images in the synthetic set");
  s.integer("eval-batch", t.eval_batch, 1, "N", "batch size for evaluation");
  s.group("Optimisation");
  s.integer("batch", t.batch, 1, "N", "mini-batch size of each owner step");
  s.number("lr", t.lr, Range::kPositive, "SGD learning rate");
  s.number("momentum", t.momentum, Range::kUnitOpen, "SGD momentum, in [0, 1)");
  s.number("weight-decay", t.weight_decay, Range::kNonNegative, "L2 weight decay");
  s.group("Rounds");
  s.integer("rounds", t.rounds, 1, "N", "training rounds (owners' copies are averaged each round)");
  s.integer("local-epochs", t.local_epochs, 1, "R", "local epochs per round");
  s.integer("batches-per-epoch", t.batches_per_epoch, 0, "B",
            "cap on batches per owner per local epoch (0 = the whole shard)");
  s.integer<int64_t>("max-steps", t.max_steps, 0, "N", "stop after N steps (0 = no cap)");
  s.integer("warmup-steps", t.warmup_steps, 0, "N", "steps left out of the throughput figure");
  s.group("Data owners");
  s.integer("owners", t.owners, 1, "K", "logical data owners, spread over the owner ranks");
  s.choice("partition", t.partition, {"iid", "dirichlet"}, "how the training set is shared out");
  s.number("alpha", t.alpha, Range::kPositive, "Dirichlet concentration (smaller = more skewed)");
  s.group("Stages");
  s.integer("stages", t.stages, 0, "N", "compute stages (ranks = owner ranks + N; 0 = none)");
  s.integer("replicas", t.replicas, 1, "H",
            "copies of the stage pipeline: H x N compute ranks, owner k served by replica "
            "k mod H, replicas averaged at aggregation (--stages 1 --replicas H: horizontally "
            "scaled one-hop)");
  s.text("replica-speed", t.replica_speed, "s1,...,sH",
         "relative speeds of the replicas: replica h serves about K s_h / sum(s) owners "
         "(default: owner k on replica k mod H)");
  s.text("split", t.split, "i,j,...",
         "unit index where each part after part 1 begins (N+1 values for N stages)");
  s.text("plan", t.plan, "FILE", "split points from 'mpsl plan' (instead of --split)");
  s.text("profile", t.profile, "FILE",
         "a profile from 'mpsl profile' (or the one in --plan): predicted round time and "
         "memory in --dry-run and the metrics");
  s.group("Schedule");
  s.choice("schedule", t.schedule, {"mpsl", "1f1b"}, "pipeline schedule of the stages");
  s.integer("micro-batches", t.micro_batches, 1, "M", "micro-batches per batch (must divide it)");
  s.custom("max-in-flight", "auto|off|N",
           "the most micro-batches a stage holds activations for at once (a further one waits "
           "in its receive buffer); auto: what the cost model predicts for the stage, with every "
           "rank's predicted activation slots and send buffers created at the start (needs "
           "--profile or --plan; else no limit)",
           "auto", [&t](const std::string& text, const Origin& o) {
             if (text == "auto")
               t.max_in_flight = -1;
             else if (text == "off")
               t.max_in_flight = 0;
             else {
               int n = 0;
               const char* end = text.data() + text.size();
               auto [ptr, ec] = std::from_chars(text.data(), end, n);
               if (text.empty() || ec != std::errc() || ptr != end || n < 1)
                 bad_value("max-in-flight", "auto, off or a positive integer", text, o);
               t.max_in_flight = n;
             }
           });
  s.choice("optimizer-state", t.optimizer_state, {"reset", "average", "keep"},
           "momentum buffers at each round's aggregation: zeroed, averaged, or kept per copy");
  s.group("Stragglers");
  s.number("round-deadline", t.round_deadline, Range::kNonNegative,
           "end each round this many seconds after its start (multihop; 0 = when every owner "
           "has finished); owners not finished by then are late");
  s.number("min-owners-fraction", t.min_owners_fraction, Range::kNonNegative,
           "in (0, 1]: a round needs this fraction of owners finished (without a deadline it "
           "ends as soon as they have; with one, the deadline waits for them)");
  s.choice("late-policy", t.late_policy, {"drop", "carry"},
           "late owners' updates: dropped (they restart from the average of the owners that "
           "finished) or carried (kept, averaged in the next round they finish)");
  s.text("late-owners", t.late_owners, "K,K,...",
         "treat these owners as late in every round (deterministic stragglers: tests, "
         "the single-process reference of a deadline run)");
  s.group("State");
  s.text("checkpoint-dir", t.checkpoint_dir, "DIR", "where checkpoints are written");
  s.custom("checkpoint-every", "N[rounds]|Nsteps|Ns|Nm|Nh",
           "checkpoint every N rounds (default 1 with --checkpoint-dir), every N steps (also "
           "mid-round), or every N seconds/minutes/hours of wall clock; 0 = only at the end",
           "",
           [&t](const std::string& text, const Origin& o) { parse_checkpoint_every(text, t, o); });
  s.integer("checkpoint-keep", t.checkpoint_keep, 0, "N",
            "keep only the newest N checkpoints in --checkpoint-dir (0 = keep all)");
  s.text("resume", t.resume, "latest|DIR",
         "continue from the checkpoint --checkpoint-dir's 'latest' names, or from a checkpoint "
         "folder");
  s.text("save-model", t.save_model, "FILE.h5", "save the trained model (for 'mpsl eval')");
  s.text("init-model", t.init_model, "FILE.h5",
         "start from the weights of a model file of the same --model (e.g. one written by "
         "--save-model, or exported from PyTorch) instead of the seeded initialisation");
  s.group("Observe and emulate");
  s.text("audit-dir", t.audit_dir, "DIR",
         "write every message each rank sent or received (kind, peer, bytes) to "
         "DIR/audit-rank<R>.jsonl");
  s.text("trace", t.trace, "FILE.json",
         "write a Chrome trace of all ranks (with --dry-run: the cost model's round 1)");
  s.flag("dry-run", t.dry_run, "print the role map and the memory per rank, then stop");
  s.text("emulate", t.emulate, "FILE", "device speed factors and link bandwidths to emulate");
  s.group("Reliability");
  s.custom("stall-warn", "SECONDS|off",
           "a rank that has waited this long says what it waits for and from whom (again "
           "every SECONDS)",
           "60", [&t](const std::string& text, const Origin& o) {
             t.stall_warn_seconds = parse_duration_or_off("stall-warn", text, o);
           });
  s.custom("stall-abort", "SECONDS|off",
           "a rank that has waited this long ends the whole job (MPI_Abort, exit code 1)", "off",
           [&t](const std::string& text, const Origin& o) {
             t.stall_abort_seconds = parse_duration_or_off("stall-abort", text, o);
           });
  s.choice("nan-policy", t.nan_policy, {"abort", "skip"},
           "a non-finite loss, activation or gradient: end the job, or skip that owner's batch "
           "(no update; counted)");
}

void add_eval(SpecList& s, EvalOptions& e) {
  s.group("Eval options");
  s.text("model-file", e.model_file, "FILE.h5", "a model saved by 'train --save-model'");
  s.text("checkpoint", e.checkpoint, "DIR", "a checkpoint directory (instead of --model-file)");
  s.text("test-data", e.test_data, "TEST.h5", "the test set");
  s.integer("eval-batch", e.eval_batch, 1, "N", "batch size for evaluation");
}

void add_convert(SpecList& s, ConvertOptions& c) {
  s.group("Convert options");
  s.choice("format", c.format, {"fashion-mnist", "cifar10"}, "source format");
  s.text("input", c.input, "PATH",
         "source directory or file (fashion-mnist default: /usr/share/datasets/fashion-mnist)");
  s.text("output", c.output, "FILE.h5", "the HDF5 file to write");
  s.choice("split", c.split, {"train", "test"}, "which part of the dataset");
}

void add_inspect(SpecList& s, InspectOptions& i) {
  s.group("Inspect options");
  s.positional("path", i.path);
  s.text("model", i.model, "NAME", "a zoo model: its units, output shapes, parameters, FLOPs");
  s.integer("batch", i.batch, 1, "N", "batch size for activation sizes and FLOPs");
}

void add_profile(SpecList& s, ProfileOptions& p) {
  s.group("Profile options");
  s.text("model", p.model, "NAME", "zoo model to profile");
  s.integer("batch", p.batch, 1, "N", "mini-batch size");
  s.integer("micro-batches", p.micro_batches, 1, "M", "micro-batches per batch (must divide it)");
  s.integer("repeats", p.repeats, 0, "R", "timed steps per unit (medians); 0 = bytes only");
  s.number("min-time", p.min_time, Range::kNonNegative,
           "and time steps for at least this many seconds (medians over a few seconds describe "
           "a host whose speed moves; 0 = just the repeats)");
  s.integer("concurrency", p.concurrency, -1, "N",
            "time steps with up to N processes training at once (how ranks sharing this host's "
            "cores slow each other), and hops with up to N MPI processes (spawned); "
            "-1 = cores + 2, 0 = not");
  s.integer("pipeline-ranks", p.pipeline_ranks, -1, "R",
            "calibrate the cost model with small real runs of 2..R ranks on this host (spawned; "
            "needs --concurrency): -1 = cores + 2, at most 8; 0 = not (default: experimental, "
            "one short run per rank count catches the host's slow moments)");
  s.text("device", p.device, "SPEC",
         "describe another device: slow=F,bw=8Mbit,lat=20ms,mem=4G (times scaled by F)");
  s.text("from", p.from, "PROFILE",
         "start from this profile instead of measuring: rescale it with --device, or --retime it");
  s.flag("retime", p.retime,
         "with --from: measure its times again on this host now (--repeats steps; its bytes, "
         "placement and hop times kept): seconds instead of a full profile's minutes");
  s.text("output", p.output, "PROFILE", "the profile file to write");
}

void add_plan(SpecList& s, PlanOptions& p) {
  s.group("Plan options");
  s.text("profile", p.profile, "PROFILE", "a profile written by 'mpsl profile'");
  s.integer("owners", p.owners, 1, "K", "data owners");
  s.integer("stages", p.stages, 0, "N",
            "compute stages (0 = the fewest that fit the memory and --target-round)");
  s.integer("owner-ranks", p.owner_ranks, 1, "O", "ranks holding the data owners");
  s.text("node-memory", p.node_memory, "a,b,...",
         "memory per node in bytes (K/M/G suffixes); one value for all or one per stage");
  s.text("node-speed", p.node_speed, "a,b,...",
         "relative speed per node (0.5 = twice slower than the profile); one or one per stage");
  s.text("node-device", p.node_device, "SPEC", "every compute node: slow=F,bw=...,lat=...,mem=...");
  s.text("owner-device", p.owner_device, "SPEC", "every data owner: slow=F,bw=...,lat=...,mem=...");
  s.text("owner-cuts", p.owner_cuts, "i,j|auto",
         "end of part 1 and start of part P (default 1 and the last unit); auto = choose them "
         "within the owner device's memory");
  s.choice("schedule", p.schedule, {"mpsl", "1f1b"}, "pipeline schedule");
  s.integer("batches-per-round", p.batches, 1, "B", "batches each owner trains per round (r*B)");
  s.custom("target-round", "SECONDS", "with --stages 0: the round time to meet", "0",
           [&p](const std::string& t, const Origin& o) {
             char* end = nullptr;
             p.target_round = std::strtod(t.c_str(), &end);
             if (*end || !(p.target_round > 0)) bad_value("target-round", "seconds > 0", t, o);
           });
  s.integer("cores", p.cores, 0, "C", "all ranks share C cores (0 = each rank its own node)");
  s.integer("rank-threads", p.threads, 1, "T", "threads per rank (with --cores)");
  s.text("output", p.output, "PLAN", "the plan file to write");
}

SpecList build_specs(const std::string& command, ParsedCommand& out) {
  SpecList s;
  if (command == "train") add_train(s, out.train);
  if (command == "eval") add_eval(s, out.eval);
  if (command == "convert") add_convert(s, out.convert);
  if (command == "inspect") add_inspect(s, out.inspect);
  if (command == "profile") add_profile(s, out.profile);
  if (command == "plan") add_plan(s, out.plan);
  add_common(s, out.common);
  return s;
}

// Which other commands know an option (for "--model-file is an option of 'mpsl eval'").
std::vector<std::string> commands_with_option(const std::string& name) {
  std::vector<std::string> out;
  for (const auto& c : command_names()) {
    ParsedCommand scratch;
    SpecList specs = build_specs(c, scratch);
    const Spec* s = specs.find(name);
    if (s && !s->hidden) out.push_back(c);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Help

po::options_description describe(SpecList& specs) {
  po::options_description all(100, 50);
  std::vector<std::string> groups;
  for (const auto& s : specs.specs())
    if (std::find(groups.begin(), groups.end(), s.group) == groups.end()) groups.push_back(s.group);
  for (const auto& g : groups) {
    po::options_description part(g, 100, 50);
    for (const auto& s : specs.specs()) {
      if (s.group != g || s.hidden) continue;
      std::string name = s.name == "help" ? "help,h" : s.name;
      if (s.value_name.empty()) {
        part.add_options()(name.c_str(), po::bool_switch(), s.help.c_str());
      } else {
        auto* v = po::value<std::string>()->value_name(s.value_name);
        if (!s.shown_default.empty()) v->default_value(s.shown_default, s.shown_default);
        part.add_options()(name.c_str(), v, s.help.c_str());
      }
    }
    all.add(part);
  }
  return all;
}

// ---------------------------------------------------------------------------------------------
// Config files

struct IniEntry {
  std::string section;  // "" = applies to every command
  std::string key;
  std::string value;
  int line = 0;
};

std::vector<IniEntry> read_ini(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    throw InputError("--config: cannot read '" + path + "': " + std::strerror(errno) +
                     " (expected an INI file of 'name = value' lines)");
  std::vector<IniEntry> entries;
  std::string section;
  std::string raw;
  int line_no = 0;
  while (std::getline(in, raw)) {
    ++line_no;
    // A '#' or ';' starts a comment at the start of a line or after white space.
    std::string line;
    for (size_t i = 0; i < raw.size(); ++i) {
      if ((raw[i] == '#' || raw[i] == ';') && (i == 0 || std::isspace((unsigned char)raw[i - 1])))
        break;
      line += raw[i];
    }
    line = trim(line);
    if (line.empty()) continue;
    std::string where = path + " line " + std::to_string(line_no);
    if (line.front() == '[') {
      if (line.back() != ']')
        throw InputError("config file " + where + ": expected '[section]', got '" + line + "'");
      section = trim(line.substr(1, line.size() - 2));
      if (!find_command(section)) {
        std::string hint = closest(section, command_names());
        throw InputError("config file " + where + ": unknown section [" + section + "]" +
                         (hint.empty() ? "" : " (did you mean [" + hint + "]?)") +
                         "; sections are command names: " + command_list());
      }
      continue;
    }
    size_t eq = line.find('=');
    if (eq == std::string::npos)
      throw InputError("config file " + where + ": expected 'name = value', got '" + line + "'");
    IniEntry e;
    e.section = section;
    e.key = trim(line.substr(0, eq));
    if (e.key.rfind("--", 0) == 0) e.key = e.key.substr(2);
    e.value = trim(line.substr(eq + 1));
    if (e.value.size() >= 2 && (e.value.front() == '"' || e.value.front() == '\'') &&
        e.value.back() == e.value.front())
      e.value = e.value.substr(1, e.value.size() - 2);
    e.line = line_no;
    if (e.key.empty())
      throw InputError("config file " + where + ": expected 'name = value', got '" + line + "'");
    for (const auto& prev : entries)
      if (prev.section == e.section && prev.key == e.key)
        throw InputError("config file " + where + ": '" + e.key + "' is already set on line " +
                         std::to_string(prev.line));
    entries.push_back(std::move(e));
  }
  return entries;
}

// Checks every key of the file (whatever command runs now, so a typo never waits for the day
// its command runs): a key of section [c] must be an option of c; a section-less key must be an
// option of at least one command.
void check_config_keys(const std::string& path, const std::vector<IniEntry>& entries) {
  for (const auto& e : entries) {
    std::string where = "config file " + path + " line " + std::to_string(e.line);
    std::vector<std::string> sections =
        e.section.empty() ? command_names() : std::vector<std::string>{e.section};
    bool known = false;
    std::vector<std::string> candidates;
    for (const auto& c : sections) {
      ParsedCommand scratch;
      SpecList specs = build_specs(c, scratch);
      const Spec* s = specs.find(e.key);
      if (s && !s->hidden) {
        if (s->cli_only)
          throw InputError(where + ": '" + e.key +
                           "' is accepted on the command line only, not in a config file");
        known = true;
      }
      for (auto& n : specs.names()) candidates.push_back(n);
    }
    if (known) continue;
    std::string hint = closest(e.key, candidates);
    std::string scope = e.section.empty() ? "" : " in section [" + e.section + "]";
    std::string msg = where + ": unknown key '" + e.key + "'" + scope;
    if (!hint.empty()) msg += " (did you mean '" + hint + "'?)";
    if (!e.section.empty()) {
      auto owners = commands_with_option(e.key);
      if (!owners.empty()) msg += "; '" + e.key + "' is an option of: " + join(owners, " ");
    }
    msg += "; 'mpsl " + (e.section.empty() ? std::string("<command>") : e.section) +
           " --help' lists the options";
    throw InputError(msg);
  }
}

// ---------------------------------------------------------------------------------------------
// Cross-option checks (what can be checked without the model and the dataset)

void require(bool ok, const std::string& message) {
  if (!ok) throw InputError(message);
}

void validate_split(const TrainOptions& t) {
  if (t.split.empty()) return;
  std::vector<long> points;
  std::stringstream ss(t.split);
  std::string item;
  while (std::getline(ss, item, ',')) {
    item = trim(item);
    long v = -1;
    auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (ec != std::errc() || ptr != item.data() + item.size() || item.empty() || v < 0)
      throw InputError(
          "--split must be a comma-separated list of non-negative unit indices, got '" + t.split +
          "'");
    points.push_back(v);
  }
  if (t.split.back() == ',')
    throw InputError("--split must be a comma-separated list of non-negative unit indices, got '" +
                     t.split + "'");
  for (size_t i = 1; i < points.size(); ++i)
    require(points[i] > points[i - 1],
            "--split must list increasing unit indices, got '" + t.split + "'");
  require(points.front() > 0,
          "--split: part 1 must hold at least one unit (the first index must "
          "be at least 1), got '" +
              t.split + "'");
  if (t.stages > 0)
    require(static_cast<int>(points.size()) == t.stages + 1,
            "--split must give " + std::to_string(t.stages + 1) + " indices for --stages " +
                std::to_string(t.stages) +
                " (the end of part 1, each stage boundary, the start of part P), got '" + t.split +
                "'");
}

void validate_train(TrainOptions& t) {
  require(!t.model.empty(),
          "train needs --model NAME (fmnist-cnn lenet5 vgg11 vgg16 vgg19 resnet18 resnet101)");
  require(!t.data.empty() || t.synthetic, "train needs --data TRAIN.h5 or --synthetic");
  require(t.data.empty() || !t.synthetic, "--data and --synthetic exclude each other; give one");
  require(t.batch % t.micro_batches == 0, "--micro-batches must divide --batch (" +
                                              std::to_string(t.batch) + "), got " +
                                              std::to_string(t.micro_batches));
  require(t.split.empty() || t.plan.empty(), "--split and --plan exclude each other; give one");
  validate_split(t);
  require(t.checkpoint_every_text.empty() || !t.checkpoint_dir.empty(),
          "--checkpoint-every needs --checkpoint-dir DIR");
  require(t.checkpoint_keep == 0 || !t.checkpoint_dir.empty(),
          "--checkpoint-keep needs --checkpoint-dir DIR");
  if (!t.checkpoint_dir.empty() && t.checkpoint_every_text.empty()) t.checkpoint_every = 1;
  require(t.resume != "latest" || !t.checkpoint_dir.empty(),
          "--resume latest needs --checkpoint-dir DIR (or give --resume DIR)");
}

void validate_eval(const EvalOptions& e) {
  require(!e.model_file.empty() || !e.checkpoint.empty(),
          "eval needs --model-file FILE.h5 or --checkpoint DIR");
  require(e.model_file.empty() || e.checkpoint.empty(),
          "--model-file and --checkpoint exclude each other; give one");
  require(!e.test_data.empty(), "eval needs --test-data TEST.h5");
}

void validate_convert(ConvertOptions& c) {
  require(!c.format.empty(), "convert needs --format fashion-mnist|cifar10");
  require(!c.output.empty(), "convert needs --output FILE.h5");
  if (c.input.empty() && c.format == "fashion-mnist") c.input = "/usr/share/datasets/fashion-mnist";
  require(!c.input.empty(), "convert --format " + c.format +
                                " needs --input PATH (the directory of the binary batches)");
}

void validate_inspect(const InspectOptions& i) {
  require(!i.path.empty() || !i.model.empty(), "inspect needs a PATH or --model NAME");
  require(i.path.empty() || i.model.empty(), "inspect takes a PATH or --model NAME, not both");
}

void validate_profile(const ProfileOptions& p) {
  require(!p.retime || !p.from.empty(), "--retime needs --from PROFILE (the profile to retime)");
  require(!p.model.empty() || !p.from.empty(), "profile needs --model NAME (or --from PROFILE)");
  require(!p.output.empty(), "profile needs --output PROFILE");
  require(!p.retime || p.repeats > 0, "--retime needs --repeats of at least 1");
  require(p.from.empty() || p.model.empty(),
          "--from PROFILE names its model: give --from or --model, not both");
  require(p.batch % p.micro_batches == 0, "--micro-batches must divide --batch (" +
                                              std::to_string(p.batch) + "), got " +
                                              std::to_string(p.micro_batches));
}

void validate_plan(const PlanOptions& p) {
  require(!p.profile.empty(), "plan needs --profile PROFILE");
  require(!p.output.empty(), "plan needs --output PLAN");
}

void validate(ParsedCommand& out) {
  const std::string& c = out.command;
  if (c == "train") validate_train(out.train);
  if (c == "eval") validate_eval(out.eval);
  if (c == "convert") validate_convert(out.convert);
  if (c == "inspect") validate_inspect(out.inspect);
  if (c == "profile") validate_profile(out.profile);
  if (c == "plan") validate_plan(out.plan);
}

// ---------------------------------------------------------------------------------------------
// The command line

std::string unknown_option_message(const std::string& command, const std::string& token,
                                   SpecList& specs) {
  std::string name = token;
  if (name.rfind("--", 0) == 0)
    name = name.substr(2);
  else if (name.rfind('-', 0) == 0)
    name = name.substr(1);
  name = name.substr(0, name.find('='));
  std::string msg = "unknown option '" + token + "' for 'mpsl " + command + "'";
  auto owners = commands_with_option(name);
  if (!owners.empty()) {
    msg += "; --" + name + " is an option of: " + join(owners, " ");
  } else {
    std::string hint = closest(name, specs.names());
    if (!hint.empty()) msg += " (did you mean '--" + hint + "'?)";
  }
  return msg + "; 'mpsl " + command + " --help' lists the options";
}

// `desc` must hold the hidden "__positional" option and outlive the result (store() uses it).
po::parsed_options run_boost(const std::string& command, const std::vector<std::string>& args,
                             const po::options_description& desc, SpecList& specs) {
  po::positional_options_description positional;
  positional.add("__positional", -1);
  int style = po::command_line_style::unix_style & ~po::command_line_style::allow_guessing &
              ~po::command_line_style::allow_sticky;
  try {
    return po::command_line_parser(args).options(desc).positional(positional).style(style).run();
  } catch (const po::unknown_option& e) {
    throw InputError(unknown_option_message(command, e.get_option_name(), specs));
  } catch (const po::invalid_command_line_syntax& e) {
    std::string opt = e.get_option_name();
    if (e.kind() == po::invalid_syntax::missing_parameter) {
      std::string name = opt.rfind("--", 0) == 0 ? opt.substr(2) : opt;
      const Spec* s = specs.find(name);
      throw InputError(opt + " expects a value" +
                       (s && !s->value_name.empty() ? " (" + s->value_name + ")" : "") +
                       "; 'mpsl " + command + " --help' lists the options");
    }
    if (e.kind() == po::invalid_syntax::extra_parameter)
      throw InputError(opt + " is a switch and takes no value (write " + opt +
                       " alone, or set it to true/false in a config file)");
    throw InputError(std::string(e.what()) + " (for 'mpsl " + command + "')");
  } catch (const po::multiple_occurrences& e) {
    throw InputError(e.get_option_name() + " is given more than once");
  } catch (const po::error& e) {
    throw InputError(std::string(e.what()) + " (for 'mpsl " + command + "')");
  }
}

ParsedCommand help_result(std::string command, std::string text) {
  ParsedCommand out;
  out.action = Action::kHelp;
  out.command = std::move(command);
  out.text = std::move(text);
  return out;
}

ParsedCommand version_result() {
  ParsedCommand out;
  out.action = Action::kVersion;
  out.text = version_text() + "\n";
  return out;
}

[[noreturn]] void unknown_command(const std::string& name) {
  std::string hint = closest(name, command_names());
  throw InputError("unknown command '" + name + "'" +
                   (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
                   "; commands: " + command_list() + " ('mpsl --help' describes them)");
}

}  // namespace

const std::vector<std::string>& command_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const auto& c : command_table()) v.push_back(c.name);
    return v;
  }();
  return names;
}

bool command_available(const std::string& command) {
  const CommandInfo* c = find_command(command);
  return c && c->available;
}

std::string version_text() {
  return std::string("mpsl ") + MPSL_VERSION;
}

std::string top_level_help() {
  std::ostringstream os;
  os << "Usage: mpsl <command> [options]\n"
     << "Multihop parallel split learning: data owners keep their data, compute stages train\n"
     << "the middle of the model; one binary, roles by MPI rank.\n\nCommands:\n";
  for (const auto& c : command_table()) {
    std::string name = c.name;
    os << "  " << name << std::string(10 - name.size(), ' ') << c.summary << "\n";
  }
  os << "\nCommon options (every command): --config FILE --seed N --threads N --metrics FILE\n"
     << "  --log-level error|warn|info|debug --quiet --help --version\n"
     << "'mpsl <command> --help' lists a command's options with their defaults.\n"
     << "Exit codes: 0 success, 2 bad input, 1 any other failure.\n";
  return os.str();
}

std::string command_help(const std::string& command) {
  const CommandInfo* info = find_command(command);
  if (!info) unknown_command(command);
  ParsedCommand scratch;
  SpecList specs = build_specs(command, scratch);
  std::ostringstream os;
  os << "Usage: " << info->usage << "\n"
     << "  " << info->summary << "\n";
  if (!info->available) os << "  (not available in this build yet: its options are parsed only)\n";
  os << describe(specs);
  os << "\nOptions may also come from --config FILE.ini (same long names; section-less values "
        "apply\nto every command, ["
     << command
     << "] values to this one); the command line "
        "wins.\n";
  return os.str();
}

ParsedCommand parse_command_line(int argc, const char* const argv[]) {
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
  if (args.empty())
    throw InputError("no command given; usage: mpsl <command> [options]; commands: " +
                     command_list() + " ('mpsl --help' describes them)");

  const std::string& first = args[0];
  if (first == "--help" || first == "-h" || first == "help") {
    if (first == "help" && args.size() >= 2) return help_result(args[1], command_help(args[1]));
    return help_result("", top_level_help());
  }
  if (first == "--version") return version_result();
  if (first.rfind('-', 0) == 0)
    throw InputError("expected a command before the options, got '" + first +
                     "'; usage: mpsl <command> [options]; commands: " + command_list());
  if (!find_command(first)) unknown_command(first);

  ParsedCommand out;
  out.command = first;
  SpecList specs = build_specs(out.command, out);
  po::options_description desc = describe(specs);
  desc.add_options()("__positional", po::value<std::vector<std::string>>(), "");
  std::vector<std::string> rest(args.begin() + 1, args.end());
  po::parsed_options parsed = run_boost(out.command, rest, desc, specs);
  po::variables_map vm;
  try {
    po::store(parsed, vm);
  } catch (const po::multiple_occurrences& e) {
    throw InputError(e.get_option_name() + " is given more than once");
  } catch (const po::error& e) {
    throw InputError(std::string(e.what()) + " (for 'mpsl " + out.command + "')");
  }

  auto given = [&vm](const std::string& name) { return vm.count(name) && !vm[name].defaulted(); };
  if (given("help") && vm["help"].as<bool>())
    return help_result(out.command, command_help(out.command));
  if (given("version") && vm["version"].as<bool>()) return version_result();

  // Positional arguments: inspect takes one PATH, nothing else takes any.
  if (vm.count("__positional")) {
    auto words = vm["__positional"].as<std::vector<std::string>>();
    if (out.command == "inspect" && words.size() == 1) {
      out.inspect.path = words[0];
    } else {
      std::string extra = out.command == "inspect" ? words[1] : words[0];
      throw InputError("unexpected argument '" + extra + "' for 'mpsl " + out.command +
                       "' (options start with --; 'mpsl " + out.command + " --help' lists them)");
    }
  }

  // Command-line values first.
  std::map<std::string, std::string> from_cli;
  for (const auto& s : specs.specs()) {
    if (s.hidden || s.name == "help" || s.name == "version" || !given(s.name)) continue;
    if (s.value_name.empty()) {
      if (vm[s.name].as<bool>()) from_cli[s.name] = "true";
    } else {
      from_cli[s.name] = vm[s.name].as<std::string>();
    }
  }
  for (auto& s : specs.specs()) {
    auto it = from_cli.find(s.name);
    if (it != from_cli.end()) s.set(it->second, Origin{});
  }

  // Then what the config file adds: [command] values win over section-less ones.
  if (!out.common.config.empty()) {
    const std::string path = out.common.config;
    std::vector<IniEntry> entries = read_ini(path);
    check_config_keys(path, entries);
    for (auto& s : specs.specs()) {
      if (s.cli_only || from_cli.count(s.name)) continue;
      const IniEntry* in_section = nullptr;
      const IniEntry* global = nullptr;
      for (const auto& e : entries) {
        if (e.key != s.name) continue;
        if (e.section == out.command) in_section = &e;
        if (e.section.empty()) global = &e;
      }
      const IniEntry* chosen = in_section ? in_section : global;
      if (!chosen) continue;
      std::string scope = chosen->section.empty() ? "" : ", section [" + chosen->section + "]";
      s.set(chosen->value, Origin{" (config file " + path + " line " +
                                  std::to_string(chosen->line) + scope + ")"});
    }
  }

  validate(out);
  return out;
}

ParsedCommand parse_args(const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  argv.push_back("mpsl");
  for (const auto& a : args) argv.push_back(a.c_str());
  argv.push_back(nullptr);
  return parse_command_line(static_cast<int>(args.size() + 1), argv.data());
}

}  // namespace mpsl::cli

// Command-line and config-file parsing (no process, no MPI), plus the small obs helpers the
// CLI relies on (log levels, metrics lines, memory figures).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mpsl/cli/parse.hpp"
#include "mpsl/core/error.hpp"
#include "mpsl/obs/log.hpp"
#include "mpsl/obs/memory.hpp"
#include "mpsl/obs/metrics.hpp"

namespace fs = std::filesystem;
using mpsl::InputError;
using mpsl::cli::Action;
using mpsl::cli::parse_args;
using mpsl::cli::ParsedCommand;

namespace {

// A fresh directory per test, removed afterwards.
class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("mpsl_test_cli_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write_file(const std::string& name, const std::string& text) {
    fs::path p = dir_ / name;
    std::ofstream(p) << text;
    return p.string();
  }

  fs::path dir_;
};

// Expects an InputError whose message contains every one of `parts`.
void expect_input_error(const std::vector<std::string>& args,
                        const std::vector<std::string>& parts) {
  std::string joined;
  for (const auto& a : args) joined += a + " ";
  try {
    parse_args(args);
    ADD_FAILURE() << "no InputError for: " << joined;
  } catch (const InputError& e) {
    std::string msg = e.what();
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos)
          << "message for '" << joined << "' lacks '" << p << "': " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type for '" << joined << "': " << e.what();
  }
}

const std::vector<std::string> kMinimalTrain = {"train", "--model", "fmnist-cnn", "--synthetic"};

std::vector<std::string> train_with(std::vector<std::string> extra) {
  std::vector<std::string> args = kMinimalTrain;
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

}  // namespace

// --- defaults and the command line -----------------------------------------------------------

TEST_F(CliTest, TrainDefaultsMatchTheOptionStruct) {
  ParsedCommand p = parse_args(kMinimalTrain);
  const mpsl::cli::TrainOptions defaults;
  const mpsl::cli::CommonOptions common;
  EXPECT_EQ(p.action, Action::kRun);
  EXPECT_EQ(p.command, "train");
  EXPECT_EQ(p.train.model, "fmnist-cnn");
  EXPECT_TRUE(p.train.synthetic);
  EXPECT_EQ(p.train.batch, defaults.batch);
  EXPECT_FLOAT_EQ(p.train.lr, defaults.lr);
  EXPECT_FLOAT_EQ(p.train.momentum, defaults.momentum);
  EXPECT_FLOAT_EQ(p.train.weight_decay, defaults.weight_decay);
  EXPECT_EQ(p.train.rounds, defaults.rounds);
  EXPECT_EQ(p.train.local_epochs, defaults.local_epochs);
  EXPECT_EQ(p.train.owners, defaults.owners);
  EXPECT_EQ(p.train.partition, "iid");
  EXPECT_EQ(p.train.schedule, "mpsl");
  EXPECT_EQ(p.train.micro_batches, 1);
  EXPECT_EQ(p.train.max_in_flight, -1);  // auto
  EXPECT_EQ(p.train.stages, defaults.stages);
  EXPECT_FALSE(p.train.dry_run);
  EXPECT_EQ(p.common.seed, common.seed);
  EXPECT_EQ(p.common.threads, common.threads);
  EXPECT_EQ(p.common.log_level, "info");
  EXPECT_FALSE(p.common.quiet);
  EXPECT_TRUE(p.common.config.empty());
}

TEST_F(CliTest, TrainOptionsFromTheCommandLine) {
  ParsedCommand p = parse_args({"train",
                                "--model",
                                "vgg11",
                                "--data",
                                "train.h5",
                                "--test-data=test.h5",
                                "--batch",
                                "64",
                                "--lr",
                                "0.05",
                                "--momentum",
                                "0",
                                "--weight-decay",
                                "0",
                                "--rounds",
                                "3",
                                "--local-epochs",
                                "2",
                                "--batches-per-epoch",
                                "10",
                                "--max-steps",
                                "100",
                                "--warmup-steps",
                                "0",
                                "--owners",
                                "4",
                                "--partition",
                                "dirichlet",
                                "--alpha",
                                "0.1",
                                "--stages",
                                "2",
                                "--split",
                                "2,5,9",
                                "--schedule",
                                "1f1b",
                                "--micro-batches",
                                "4",
                                "--checkpoint-dir",
                                "ck",
                                "--checkpoint-every",
                                "1",
                                "--resume",
                                "latest",
                                "--save-model",
                                "m.h5",
                                "--trace",
                                "t.json",
                                "--dry-run",
                                "--emulate",
                                "e.ini",
                                "--eval-batch",
                                "500",
                                "--seed",
                                "42",
                                "--threads",
                                "2",
                                "--metrics",
                                "m.jsonl",
                                "--log-level",
                                "debug",
                                "--quiet"});
  const auto& t = p.train;
  EXPECT_EQ(t.model, "vgg11");
  EXPECT_EQ(t.data, "train.h5");
  EXPECT_EQ(t.test_data, "test.h5");
  EXPECT_EQ(t.batch, 64);
  EXPECT_FLOAT_EQ(t.lr, 0.05f);
  EXPECT_FLOAT_EQ(t.momentum, 0.0f);
  EXPECT_FLOAT_EQ(t.weight_decay, 0.0f);
  EXPECT_EQ(t.rounds, 3);
  EXPECT_EQ(t.local_epochs, 2);
  EXPECT_EQ(t.batches_per_epoch, 10);
  EXPECT_EQ(t.max_steps, 100);
  EXPECT_EQ(t.warmup_steps, 0);
  EXPECT_EQ(t.owners, 4);
  EXPECT_EQ(t.partition, "dirichlet");
  EXPECT_FLOAT_EQ(t.alpha, 0.1f);
  EXPECT_EQ(t.stages, 2);
  EXPECT_EQ(t.split, "2,5,9");
  EXPECT_EQ(t.schedule, "1f1b");
  EXPECT_EQ(t.micro_batches, 4);
  EXPECT_EQ(t.checkpoint_dir, "ck");
  EXPECT_EQ(t.checkpoint_every, 1);
  EXPECT_EQ(t.resume, "latest");
  EXPECT_EQ(t.save_model, "m.h5");
  EXPECT_EQ(t.trace, "t.json");
  EXPECT_TRUE(t.dry_run);
  EXPECT_EQ(t.emulate, "e.ini");
  EXPECT_EQ(t.eval_batch, 500);
  EXPECT_EQ(p.common.seed, 42u);
  EXPECT_EQ(p.common.threads, 2);
  EXPECT_EQ(p.common.metrics, "m.jsonl");
  EXPECT_EQ(p.common.log_level, "debug");
  EXPECT_TRUE(p.common.quiet);
}

TEST_F(CliTest, OtherCommandsParseTheirOptions) {
  ParsedCommand c =
      parse_args({"convert", "--format", "fashion-mnist", "--output", "o.h5", "--split", "test"});
  EXPECT_EQ(c.command, "convert");
  EXPECT_EQ(c.convert.format, "fashion-mnist");
  EXPECT_EQ(c.convert.output, "o.h5");
  EXPECT_EQ(c.convert.split, "test");
  EXPECT_FALSE(c.convert.input.empty());  // fashion-mnist has a default input directory

  ParsedCommand e = parse_args({"eval", "--model-file", "m.h5", "--test-data", "t.h5"});
  EXPECT_EQ(e.eval.model_file, "m.h5");
  EXPECT_EQ(e.eval.test_data, "t.h5");

  ParsedCommand i = parse_args({"inspect", "ckpt/round-3"});
  EXPECT_EQ(i.inspect.path, "ckpt/round-3");
  ParsedCommand z = parse_args({"inspect", "--model", "resnet18", "--batch", "8"});
  EXPECT_EQ(z.inspect.model, "resnet18");
  EXPECT_EQ(z.inspect.batch, 8);

  ParsedCommand pr = parse_args({"profile", "--model", "vgg16", "--batch", "32", "--micro-batches",
                                 "4", "--output", "p.json"});
  EXPECT_EQ(pr.profile.model, "vgg16");
  EXPECT_EQ(pr.profile.batch, 32);
  EXPECT_EQ(pr.profile.micro_batches, 4);
  EXPECT_EQ(pr.profile.output, "p.json");

  ParsedCommand pl = parse_args({"plan", "--profile", "p.json", "--owners", "8", "--stages", "3",
                                 "--node-memory", "4G,4G,8G", "--output", "plan.json"});
  EXPECT_EQ(pl.plan.profile, "p.json");
  EXPECT_EQ(pl.plan.owners, 8);
  EXPECT_EQ(pl.plan.stages, 3);
  EXPECT_EQ(pl.plan.node_memory, "4G,4G,8G");
  EXPECT_EQ(pl.plan.output, "plan.json");
}

TEST_F(CliTest, HelpAndVersionReturnText) {
  ParsedCommand top = parse_args({"--help"});
  EXPECT_EQ(top.action, Action::kHelp);
  for (const auto& c : mpsl::cli::command_names())
    EXPECT_NE(top.text.find(c), std::string::npos) << c;

  ParsedCommand h = parse_args({"train", "--help"});
  EXPECT_EQ(h.action, Action::kHelp);
  EXPECT_NE(h.text.find("--micro-batches"), std::string::npos);
  EXPECT_NE(h.text.find("(=128)"), std::string::npos);  // defaults are shown
  EXPECT_NE(h.text.find("--config"), std::string::npos);

  ParsedCommand h2 = parse_args({"help", "eval"});
  EXPECT_EQ(h2.action, Action::kHelp);
  EXPECT_NE(h2.text.find("--model-file"), std::string::npos);

  // --help wins over missing required options.
  EXPECT_EQ(parse_args({"eval", "--help"}).action, Action::kHelp);

  ParsedCommand v = parse_args({"--version"});
  EXPECT_EQ(v.action, Action::kVersion);
  EXPECT_EQ(v.text.rfind("mpsl ", 0), 0u);
  EXPECT_EQ(parse_args({"train", "--version"}).action, Action::kVersion);
}

// --- config files ------------------------------------------------------------------------------

TEST_F(CliTest, ConfigFileSectionAndGlobalKeys) {
  std::string ini = write_file("run.ini",
                               "# applies to every command\n"
                               "seed = 7\n"
                               "test-data = test.h5   # train and eval both know it\n"
                               "model-file = m.h5     ; eval only: train ignores it\n"
                               "batch = 32\n"
                               "\n"
                               "[train]\n"
                               "model = fmnist-cnn\n"
                               "synthetic = true\n"
                               "batch = 64\n"
                               "schedule = 1f1b\n"
                               "\n"
                               "[eval]\n"
                               "eval-batch = 250\n");
  ParsedCommand t = parse_args({"train", "--config", ini});
  EXPECT_EQ(t.common.config, ini);
  EXPECT_EQ(t.common.seed, 7u);
  EXPECT_EQ(t.train.model, "fmnist-cnn");
  EXPECT_TRUE(t.train.synthetic);
  EXPECT_EQ(t.train.batch, 64);  // [train] wins over the section-less value
  EXPECT_EQ(t.train.schedule, "1f1b");
  EXPECT_EQ(t.train.test_data, "test.h5");
  EXPECT_EQ(t.train.eval_batch, mpsl::cli::TrainOptions{}.eval_batch);  // [eval] is not train's

  ParsedCommand e = parse_args({"eval", "--config", ini});
  EXPECT_EQ(e.eval.model_file, "m.h5");
  EXPECT_EQ(e.eval.test_data, "test.h5");
  EXPECT_EQ(e.eval.eval_batch, 250);
  EXPECT_EQ(e.common.seed, 7u);
}

TEST_F(CliTest, CommandLineWinsOverConfigFile) {
  std::string ini = write_file("run.ini",
                               "seed = 7\n"
                               "[train]\n"
                               "model = vgg11\n"
                               "synthetic = true\n"
                               "batch = 64\n"
                               "lr = 0.1\n"
                               "quiet = false\n");
  ParsedCommand t = parse_args(
      {"train", "--batch", "16", "--config", ini, "--seed", "3", "--model", "lenet5", "--quiet"});
  EXPECT_EQ(t.train.batch, 16);
  EXPECT_EQ(t.common.seed, 3u);
  EXPECT_EQ(t.train.model, "lenet5");
  EXPECT_TRUE(t.common.quiet);
  EXPECT_FLOAT_EQ(t.train.lr, 0.1f);  // not on the command line: from the file
}

TEST_F(CliTest, ConfigFileErrorsNameFileKeyAndLine) {
  std::string unknown = write_file("unknown.ini", "[train]\nmodel = x\nbach = 64\n");
  expect_input_error({"train", "--config", unknown, "--synthetic"},
                     {unknown, "line 3", "'bach'", "batch"});

  std::string global = write_file("global.ini", "seed = 1\nfrobnicate = yes\n");
  expect_input_error(train_with({"--config", global}), {global, "line 2", "'frobnicate'"});

  std::string wrong_cmd = write_file("wrong.ini", "[train]\nmodel-file = m.h5\n");
  expect_input_error(train_with({"--config", wrong_cmd}), {"line 2", "'model-file'", "eval"});

  std::string section = write_file("section.ini", "[trian]\nbatch = 3\n");
  expect_input_error(train_with({"--config", section}), {section, "line 1", "[trian]", "train"});

  std::string bad_value = write_file("value.ini", "[train]\n\nbatch = abc\n");
  expect_input_error(train_with({"--config", bad_value}),
                     {"--batch", "'abc'", bad_value, "line 3"});

  std::string syntax = write_file("syntax.ini", "batch 64\n");
  expect_input_error(train_with({"--config", syntax}), {syntax, "line 1"});

  std::string twice = write_file("twice.ini", "[train]\nlr = 0.1\nlr = 0.2\n");
  expect_input_error(train_with({"--config", twice}), {"line 3", "'lr'", "line 2"});

  std::string nested = write_file("nested.ini", "config = other.ini\n");
  expect_input_error(train_with({"--config", nested}), {"'config'", "command line"});
}

TEST_F(CliTest, MissingConfigFile) {
  std::string path = (dir_ / "does-not-exist.ini").string();
  expect_input_error(train_with({"--config", path}), {"--config", path});
}

// --- bad command lines -----------------------------------------------------------------------

TEST_F(CliTest, UnknownCommandListsTheCommands) {
  expect_input_error({"trian"}, {"'trian'", "train", "eval", "convert", "inspect"});
  expect_input_error({}, {"command", "train"});
  expect_input_error({"--batch", "3"}, {"'--batch'", "train"});
}

TEST_F(CliTest, UnknownOptionNamesItAndHints) {
  expect_input_error(train_with({"--bach", "64"}), {"'--bach'", "--batch"});
  expect_input_error(train_with({"--model-file", "m.h5"}), {"--model-file", "eval"});
  expect_input_error(train_with({"extra"}), {"'extra'"});
  // No prefix guessing: "--mod" is not "--model".
  expect_input_error({"train", "--mod", "x", "--synthetic"}, {"'--mod'"});
}

TEST_F(CliTest, MalformedNumbers) {
  expect_input_error(train_with({"--batch", "abc"}), {"--batch", "positive integer", "'abc'"});
  expect_input_error(train_with({"--batch", "12x"}), {"--batch", "'12x'"});
  expect_input_error(train_with({"--batch", "0"}), {"--batch", "positive integer", "'0'"});
  expect_input_error(train_with({"--batch", "1.5"}), {"--batch", "'1.5'"});
  expect_input_error(train_with({"--batch", "99999999999"}), {"--batch"});
  expect_input_error(train_with({"--rounds", "-1"}), {"--rounds", "positive integer"});
  expect_input_error(train_with({"--local-epochs", "0"}), {"--local-epochs"});
  expect_input_error(train_with({"--lr", "0"}), {"--lr", "positive number", "'0'"});
  expect_input_error(train_with({"--lr", "fast"}), {"--lr", "'fast'"});
  expect_input_error(train_with({"--lr", "nan"}), {"--lr"});
  expect_input_error(train_with({"--momentum", "1"}), {"--momentum", "[0, 1)", "'1'"});
  expect_input_error(train_with({"--momentum", "-0.1"}), {"--momentum"});
  expect_input_error(train_with({"--weight-decay", "-1"}), {"--weight-decay", "non-negative"});
  expect_input_error(train_with({"--seed", "-5"}), {"--seed", "non-negative integer"});
  expect_input_error(train_with({"--threads", "two"}), {"--threads", "'two'"});
  expect_input_error(train_with({"--batch"}), {"--batch", "value"});
}

TEST_F(CliTest, BadChoices) {
  expect_input_error(train_with({"--schedule", "gpipe"}), {"--schedule", "mpsl|1f1b", "'gpipe'"});
  expect_input_error(train_with({"--partition", "skewed"}), {"--partition", "iid|dirichlet"});
  expect_input_error(train_with({"--log-level", "loud"}), {"--log-level", "error|warn|info|debug"});
  expect_input_error({"convert", "--format", "mnist", "--output", "o.h5"}, {"--format", "cifar10"});
}

TEST_F(CliTest, MaxInFlightIsAutoOffOrAPositiveCount) {
  EXPECT_EQ(parse_args(train_with({"--max-in-flight", "auto"})).train.max_in_flight, -1);
  EXPECT_EQ(parse_args(train_with({"--max-in-flight", "off"})).train.max_in_flight, 0);
  EXPECT_EQ(parse_args(train_with({"--max-in-flight", "3"})).train.max_in_flight, 3);
  for (const char* bad : {"0", "-2", "many", "2.5", ""})
    expect_input_error(
        train_with({"--max-in-flight", bad}),
        {"--max-in-flight", "auto, off or a positive integer", "'" + std::string(bad) + "'"});
}

TEST_F(CliTest, MicroBatchesMustDivideTheBatch) {
  expect_input_error(train_with({"--batch", "64", "--micro-batches", "3"}),
                     {"--micro-batches", "--batch", "64", "3"});
  expect_input_error(train_with({"--micro-batches", "0"}), {"--micro-batches", "positive"});
  EXPECT_EQ(parse_args(train_with({"--batch", "64", "--micro-batches", "8"})).train.micro_batches,
            8);
}

TEST_F(CliTest, TrainNeedsModelAndData) {
  expect_input_error({"train", "--synthetic"}, {"--model"});
  expect_input_error({"train", "--model", "fmnist-cnn"}, {"--data", "--synthetic"});
  expect_input_error({"train", "--model", "fmnist-cnn", "--data", "d.h5", "--synthetic"},
                     {"--data", "--synthetic"});
}

TEST_F(CliTest, CrossOptionChecks) {
  expect_input_error(train_with({"--split", "2,5", "--plan", "p.json"}), {"--split", "--plan"});
  expect_input_error(train_with({"--split", "5,2"}), {"--split", "increasing"});
  expect_input_error(train_with({"--split", "2,x"}), {"--split"});
  expect_input_error(train_with({"--stages", "2", "--split", "2,5"}), {"--split", "3", "--stages"});
  expect_input_error(train_with({"--checkpoint-every", "1"}), {"--checkpoint-dir"});
  expect_input_error(train_with({"--resume", "latest"}), {"--checkpoint-dir"});
  expect_input_error({"train", "--model", "x", "--synthetic", "--quiet=yes"}, {"--quiet"});
  expect_input_error(train_with({"--batch", "1", "--batch", "2"}), {"--batch", "more than once"});
  expect_input_error({"eval", "--test-data", "t.h5"}, {"--model-file", "--checkpoint"});
  expect_input_error({"eval", "--model-file", "m.h5"}, {"--test-data"});
  expect_input_error({"inspect"}, {"PATH", "--model"});
  expect_input_error({"inspect", "a", "b"}, {"'b'"});
  expect_input_error({"convert", "--format", "cifar10", "--output", "o.h5"}, {"--input"});
  expect_input_error({"convert", "--format", "fashion-mnist"}, {"--output"});
}

// --- obs helpers -----------------------------------------------------------------------------

TEST(ObsLog, ParseLogLevel) {
  EXPECT_EQ(mpsl::obs::parse_log_level("debug"), mpsl::obs::LogLevel::kDebug);
  EXPECT_EQ(mpsl::obs::parse_log_level("error"), mpsl::obs::LogLevel::kError);
  EXPECT_THROW(mpsl::obs::parse_log_level("verbose"), InputError);
}

TEST(ObsLog, QuietSilencesInfoButNotWarnings) {
  using mpsl::obs::LogLevel;
  mpsl::obs::set_log_level(LogLevel::kDebug);
  mpsl::obs::set_quiet(true);
  EXPECT_FALSE(mpsl::obs::log_enabled(LogLevel::kInfo));
  EXPECT_FALSE(mpsl::obs::log_enabled(LogLevel::kDebug));
  EXPECT_TRUE(mpsl::obs::log_enabled(LogLevel::kWarn));
  mpsl::obs::set_quiet(false);
  mpsl::obs::set_log_level(LogLevel::kInfo);
  EXPECT_TRUE(mpsl::obs::log_enabled(LogLevel::kInfo));
  EXPECT_FALSE(mpsl::obs::log_enabled(LogLevel::kDebug));
}

TEST_F(CliTest, MetricsWriterWritesOneObjectPerLine) {
  fs::path path = dir_ / "sub" / "dir" / "metrics.jsonl";  // parents are created
  {
    mpsl::obs::MetricsWriter w(path.string());
    EXPECT_TRUE(w.enabled());
    w.write({{"event", "run_start"}, {"command", "train"}, {"ranks", 3}});
    w.write({{"event", "round_end"}, {"round", 1}, {"train_loss", 0.5}});
    EXPECT_THROW(w.write({{"round", 2}}), mpsl::RuntimeFailure);  // no "event"
  }
  std::ifstream in(path);
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["event"], "run_start");
  EXPECT_EQ(lines[0]["ranks"], 3);
  EXPECT_EQ(lines[1]["round"], 1);

  {
    mpsl::obs::MetricsWriter again(path.string(), /*append=*/true);
    again.write({{"event", "run_end"}});
  }
  std::ifstream in2(path);
  int count = 0;
  for (std::string line; std::getline(in2, line);) ++count;
  EXPECT_EQ(count, 3);

  mpsl::obs::MetricsWriter off("");
  EXPECT_FALSE(off.enabled());
  off.write({{"event", "ignored"}});  // no file, no error
}

TEST(ObsMemory, RssFigures) {
  EXPECT_GT(mpsl::obs::peak_rss_bytes(), 0);
  EXPECT_GT(mpsl::obs::current_rss_bytes(), 0);
  EXPECT_LE(mpsl::obs::current_rss_bytes(), mpsl::obs::peak_rss_bytes() + (1 << 20));
  EXPECT_EQ(mpsl::obs::format_bytes(512), "512 B");
  EXPECT_EQ(mpsl::obs::format_bytes(3 * 1024), "3.00 KiB");
  EXPECT_EQ(mpsl::obs::format_bytes(int64_t{3} << 30), "3.00 GiB");
}

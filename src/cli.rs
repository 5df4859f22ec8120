//! The command line, declared once with clap's derive API.
//!
//! Doc comments here are the help text; `nova completions` generates shell
//! completions from the same definitions. Parsing only: what each command does
//! lives in its own module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::output::ColorChoice;
use crate::store::TaskStatus;

/// nova: prepare hosts, ship agent blueprints, and run multi-agent workflows as
/// supervised processes in dependency phases.
#[derive(Debug, Parser)]
#[command(name = "nova", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Folder for nova's state (database, logs, runs, reports) [env: NOVA_HOME, an empty
    /// one counting as unset] [default: ./.nova]
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Print machine-readable JSON on stdout, and nothing else there
    #[arg(long, global = true)]
    pub json: bool,

    /// Print nothing but errors
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Say more on stderr (repeat for more detail)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// When to use colour; NO_COLOR and a non-terminal stdout turn `auto` off
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,

    /// Ask this OPA server (http://HOST:8181) instead of the embedded policies [default: nova.yaml's opa_url]
    #[arg(
        long,
        global = true,
        env = "NOVA_OPA_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub opa_url: Option<String>,

    /// File holding a bearer token for the OPA server
    #[arg(long, global = true, env = "NOVA_OPA_TOKEN_FILE", value_name = "FILE")]
    pub opa_token_file: Option<PathBuf>,

    /// How long to wait for OPA before denying
    #[arg(long, global = true, env = "NOVA_OPA_TIMEOUT", default_value = "500ms", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub opa_timeout: std::time::Duration,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Prepare the workspace, check the host, and plan (or --apply) packages, firewall ports and users
    Setup(SetupArgs),
    /// Run a plan's agents: phases in order, tasks as supervised processes through the queue
    Orchestrate(OrchestrateArgs),
    /// Past runs, and one run's tasks, report and messages
    Runs(RunsArgs),
    /// Take agents' tasks from a queue server and run them (for runs spread over machines)
    Worker(WorkerArgs),
    /// Watch the host: CPU, memory, disk, network, GPUs; raise alerts past thresholds
    Monitor(MonitorArgs),
    /// List, show, create and validate agent blueprints
    Blueprints(BlueprintsArgs),
    /// Show a plan's phases, their agents and each agent's dependencies
    Plan(PlanArgs),
    /// Show every agent's tasks with their last known status
    Tasks(TasksArgs),
    /// Phase-by-phase progress: share of tasks done and each specialist's remaining steps
    Roadmap(RoadmapArgs),
    /// Run the task queue's gRPC server (and, with --http, the dashboard and JSON API)
    Serve(ServeArgs),
    /// Open the web dashboard on this workspace: runs, queues, the host, governance, live
    Dashboard(DashboardArgs),
    /// Enqueue, list, inspect, cancel and retry queue tasks
    Queue(QueueArgs),
    /// Evaluate, test, list and push the authorization policies
    Policy(PolicyArgs),
    /// The hash-chained audit log: show, verify, export, and ISO 27001 evidence
    Audit(AuditArgs),
    /// QA reports: a Markdown summary of test results (JUnit XML)
    Report(ReportArgs),
    /// Back up the workspace (a database snapshot, nova.yaml, blueprints, policies, reports,
    /// logs) to a folder or an S3 bucket; list and verify backups
    Backup(BackupArgs),
    /// Rebuild a workspace from a backup in an empty folder, and verify the audit chain it holds
    Restore(RestoreArgs),
    /// Counters and latency percentiles recorded by nova's long-running commands
    Kpi,
    /// Measure nova's own speed: the queue, policy decisions, audit appends, KPIs, orchestration overhead
    Bench(BenchArgs),
    /// Print shell completions for bash, zsh or fish
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// Commands that change state or run for long keep JSON log files in
    /// `$NOVA_HOME/logs`; the read-only views create nothing.
    pub fn keeps_log_files(&self) -> bool {
        match self {
            Command::Orchestrate(args) => !args.dry_run,
            other => matches!(
                other,
                Command::Serve(_) | Command::Queue(_) | Command::Worker(_) | Command::Dashboard(_)
            ),
        }
    }

    /// Commands that stop gracefully on SIGINT and SIGTERM by themselves.
    pub fn handles_signals(&self) -> bool {
        matches!(
            self,
            Command::Serve(_)
                | Command::Orchestrate(_)
                | Command::Worker(_)
                | Command::Monitor(_)
                | Command::Dashboard(_)
        )
    }
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BlueprintsArgs {
    #[command(subcommand)]
    pub action: Option<BlueprintsAction>,

    /// Only blueprints of this plan
    #[arg(long, value_name = "NAME")]
    pub plan: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum BlueprintsAction {
    /// List the catalog's blueprints, as `nova blueprints` alone does
    #[command(visible_alias = "ls")]
    List {
        /// Only blueprints of this plan
        #[arg(long, value_name = "NAME")]
        plan: Option<String>,
    },
    /// Print a blueprint's YAML (by agent name or role)
    Show {
        /// Agent name or role, case-insensitive
        name: String,
    },
    /// Write a commented blueprint template into the workspace's blueprint folder
    New {
        /// The agent's role (a built-in role's skills and definition of done are used as a start)
        role: String,
        /// The agent's name; the file is <folder>/<name>.yaml
        #[arg(long)]
        name: String,
        /// The plan the agent joins [default: the workspace plan]
        #[arg(long, value_name = "NAME")]
        plan: Option<String>,
        /// The phase the agent runs in [default: the plan's first phase]
        #[arg(long, value_name = "PHASE")]
        phase: Option<String>,
    },
    /// Write the files built-in plans' fixes use (dashboards, workflows, scripts) into the workspace, never over an edited copy (--plan: one plan's)
    Assets {
        /// Only this plan's files [default: every built-in plan's]
        #[arg(long, value_name = "NAME")]
        plan: Option<String>,
        /// Only say what would be written
        #[arg(long)]
        dry_run: bool,
    },
    /// Check blueprint files and folders (default: the whole catalog); exit 2 on any problem
    Validate {
        /// Files or folders of blueprints to check on top of the catalog
        paths: Vec<PathBuf>,
    },
}

/// Which plan and agents a command works on (`nova plan`, `nova orchestrate`).
#[derive(Debug, Clone, Args)]
pub struct Selection {
    /// The plan [default: the plan of --agents, else nova.yaml's `plan`, else spark-sophia]
    #[arg(long, value_name = "NAME")]
    pub plan: Option<String>,

    /// Only these agents and (unless --only) the agents they depend on
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "AGENT")]
    pub agents: Vec<String>,

    /// With --agents: leave out the agents they depend on
    #[arg(long, requires = "agents")]
    pub only: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub select: Selection,
}

#[derive(Debug, Args)]
pub struct TasksArgs {
    /// Only this agent's tasks (name or role, case-insensitive)
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,

    /// Only tasks of agents in this phase
    #[arg(long, value_name = "PHASE")]
    pub phase: Option<String>,

    /// Only tasks of this plan
    #[arg(long, value_name = "NAME")]
    pub plan: Option<String>,

    /// Only tasks with this status
    #[arg(long, value_enum)]
    pub status: Option<TaskStatus>,

    /// Render a Markdown checklist grouped by agent
    #[arg(long)]
    pub checklist: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoadmapFormat {
    Table,
    Markdown,
    Json,
}

#[derive(Debug, Args)]
pub struct RoadmapArgs {
    /// Only these phases
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "PHASE")]
    pub phase: Vec<String>,

    /// The plan to report on [default: the plan of --phase, else nova.yaml's `plan`, else spark-sophia]
    #[arg(long, value_name = "NAME")]
    pub plan: Option<String>,

    /// Output format (--json is the same as --format json)
    #[arg(long, value_enum, default_value_t = RoadmapFormat::Table)]
    pub format: RoadmapFormat,
}

#[derive(Debug, Clone, Args)]
pub struct StoreArg {
    /// Queue store: sqlite:PATH or redis://HOST:PORT/DB [default: sqlite:$NOVA_HOME/nova.db]
    #[arg(long, env = "NOVA_STORE", hide_env_values = true, value_name = "URL")]
    pub store: Option<String>,

    /// Create the SQLite database --store names if there is none (without it, a
    /// path that is not there is refused: a typo must not make a new, empty store)
    #[arg(long)]
    pub create: bool,
}

impl StoreArg {
    /// What the library needs of these flags.
    pub fn choice(&self) -> crate::store_url::StoreChoice {
        crate::store_url::StoreChoice {
            store: self.store.clone(),
            create: self.create,
            offers_create: true,
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; anything but loopback needs --token-file and
    /// --tls-cert, or --insecure
    #[arg(long, default_value = "127.0.0.1:6682", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,

    #[command(flatten)]
    pub store: StoreArg,

    /// File holding the bearer token every call must present
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Serve gRPC over TLS with this certificate (PEM, the chain after it)
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM)
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: refuse clients without a certificate signed by this CA (PEM)
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Allow a non-loopback address without TLS or without a token (tokens
    /// and tasks then cross the network in clear)
    #[arg(long)]
    pub insecure: bool,

    /// Serve KPIs and queue depth in the Prometheus text format at http://ADDR/metrics
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Also serve the web dashboard, the JSON API (/api/v1) and /metrics over HTTP at ADDR;
    /// off loopback it needs --token-file
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,

    /// Delete finished tasks once they are this old (as 7d), checked every minute [default: keep them]
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub keep_finished: Option<std::time::Duration>,

    /// Back up the workspace this often (as 6h), to --backup-to, with nova.yaml's backup.key
    /// and backup.keep [default: no scheduled backups]
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub backup_every: Option<std::time::Duration>,

    /// Where scheduled backups go: a folder or s3://bucket/prefix [default: nova.yaml's backup.to]
    #[arg(long, value_name = "URL", requires = "backup_every")]
    pub backup_to: Option<String>,
    /// Worker threads of the server's runtime, 1 to 1024 [default: half the CPUs, at least 1]
    #[arg(long, value_name = "N", env = "NOVA_THREADS", value_parser = thread_count)]
    pub threads: Option<std::num::NonZeroUsize>,
}

#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Address to serve on; anything but loopback needs --token-file
    #[arg(long, default_value = "127.0.0.1:6690", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,

    /// File holding the token a browser signs in with (and API clients send as a bearer token)
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Open the dashboard in the default browser
    #[arg(long)]
    pub open: bool,

    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(Debug, Clone, Args)]
pub struct OrchestrateArgs {
    #[command(flatten)]
    pub select: Selection,

    /// Only these phases
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "PHASE")]
    pub phase: Vec<String>,

    /// One agent at a time, or independent agents side by side [default: NOVA_EXECUTION_MODE, nova.yaml, sequential]
    #[arg(long, value_enum)]
    pub mode: Option<crate::config::ExecutionMode>,

    /// Most tasks at once, and the local workers that run them; with --server, the local workers only (the fleet's own --concurrency bounds the rest) [default: the number of cores]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub jobs: Option<u32>,

    /// Run the fix of every task whose check fails (without it, only checks run)
    #[arg(long)]
    pub apply: bool,

    /// Print the schedule and the commands that would run; run nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Finish an interrupted run (the last one, or RUN_ID) without redoing finished tasks;
    /// it runs what the run selected (plan, agents, phases, mode, --apply), and flags that
    /// say otherwise are refused
    #[arg(long, value_name = "RUN_ID", num_args = 0..=1)]
    pub resume: Option<Option<String>>,

    /// Stop starting agents after the first failure (the default)
    #[arg(long, conflicts_with = "keep_going")]
    pub fail_fast: bool,

    /// After a failure, still run the agents that do not depend on it
    #[arg(long)]
    pub keep_going: bool,

    /// Use this queue server instead of one in process (its workers may be elsewhere)
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,

    /// Bearer token file for --server
    #[arg(long, value_name = "FILE", requires = "server")]
    pub token_file: Option<PathBuf>,

    #[command(flatten)]
    pub tls: ClientTlsArgs,

    /// Also write the Markdown report here
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    #[command(flatten)]
    pub store: StoreArg,

    /// The new run's id (front-ends that start runs choose it; default: a fresh one)
    #[arg(long, value_name = "ID", hide = true, conflicts_with = "resume")]
    pub run_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Packages to install: docker, kubernetes, python, python-venv, nodejs,
    /// curl, git, wireguard, nvidia-container-toolkit, redis, postgresql, tree,
    /// iproute2, pciutils, ethtool, lshw, ufw, clamav, restic (or nova.yaml's
    /// setup.catalog), or
    /// MANAGER:PACKAGE. A package whose command already answers is left alone.
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "NAME")]
    pub packages: Vec<String>,

    /// Only the packages: skip the host checks, firewall ports and users
    /// (what a blueprint's fix uses to install what it needs)
    #[arg(long, requires = "packages")]
    pub packages_only: bool,

    /// Carry out the plan (installs, firewall ports, users), each step allowed by policy first
    #[arg(long)]
    pub apply: bool,

    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Time between samples
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub interval: std::time::Duration,

    /// Take one sample and stop
    #[arg(long)]
    pub once: bool,

    /// Stop after this long
    #[arg(long = "for", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub duration: Option<std::time::Duration>,

    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    #[command(subcommand)]
    pub action: Option<RunsAction>,

    /// List the newest N runs, newest first (0: every run)
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
}

#[derive(Debug, Subcommand)]
pub enum RunsAction {
    /// One run: its tasks (and with --messages, the hub's timeline)
    Show {
        /// The run's id (a unique prefix will do) [default: the newest run]
        run: Option<String>,
        /// Also show the messages of the hub
        #[arg(long)]
        messages: bool,
        /// Show the QA summary of the test results its tasks wrote (JUnit XML) instead
        #[arg(long, conflicts_with = "messages")]
        tests: bool,
    },
    /// Stop a running run on this host (as Ctrl-C would): it ends interrupted, and
    /// `nova orchestrate --resume RUN` finishes it
    Cancel {
        /// The run's id (a unique prefix will do)
        run: String,
    },
    /// Remove old runs: their records, queue tasks, logs and reports (the audit log stays)
    Prune(RunsPruneArgs),
}

#[derive(Debug, Args)]
pub struct RunsPruneArgs {
    /// Keep the newest N runs
    #[arg(long, value_name = "N")]
    pub keep: Option<u32>,

    /// Remove only runs that finished longer ago than this (as 30d or 12h)
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub older_than: Option<std::time::Duration>,

    /// Show what would go, and remove nothing
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub store: StoreArg,
}

/// TLS for a client of a queue server at an `https://` URL.
#[derive(Debug, Clone, Default, Args)]
pub struct ClientTlsArgs {
    /// Trust this CA (PEM) for an https:// server, instead of the system's roots
    #[arg(long, value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,

    /// Present this certificate (PEM) to a server that asks for one (mutual TLS)
    #[arg(long, value_name = "FILE", global = true)]
    pub client_cert: Option<PathBuf>,

    /// The private key of --client-cert (PEM)
    #[arg(long, value_name = "FILE", global = true)]
    pub client_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    pub fn load(&self) -> crate::error::Result<crate::tls::ClientTls> {
        crate::tls::ClientTls::load(
            self.ca.as_deref(),
            self.client_cert.as_deref(),
            self.client_key.as_deref(),
        )
    }
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The queue server (http://HOST:PORT)
    #[arg(long, value_name = "URL")]
    pub server: String,

    /// Bearer token file for the server
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    #[command(flatten)]
    pub tls: ClientTlsArgs,

    /// Tasks at once
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,

    /// Take tasks from these queues [default: nova-jobs, where runs on a shared server put
    /// theirs, and nova-jobs-gpus-N for tasks needing N GPUs, up to this host's count]
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "QUEUE")]
    pub queues: Vec<String>,

    /// Lease length: if this worker dies, its task goes to another after this long
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub lease: std::time::Duration,

    /// On SIGTERM or Ctrl-C the worker takes no more tasks and lets running
    /// ones finish for this long; then it stops them, hands back (releases)
    /// what it did not finish, and exits 0
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub grace: std::time::Duration,

    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(flatten)]
    pub store: StoreArg,

    #[command(subcommand)]
    pub action: PolicyAction,
}

#[derive(Debug, Subcommand)]
pub enum PolicyAction {
    /// Decide on one policy input (JSON); exit 0 when allowed, 3 when denied
    Eval {
        /// A JSON file, or - for stdin
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
    },
    /// Run the policies' tests (rules named test_*) with the embedded evaluator
    Test,
    /// List the policy files in effect and where each comes from
    List,
    /// Upload the policies in effect to the OPA server (PUT /v1/policies/{id})
    Push,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub action: Option<BackupAction>,

    /// Where backups are kept: a folder (a path or file:///path) or s3://bucket/prefix (endpoint,
    /// region and keys from the AWS_* environment or the AWS profile files) [default: nova.yaml's
    /// backup.to]
    #[arg(long, global = true, value_name = "URL")]
    pub to: Option<String>,

    /// Also back up the runs' folders ($NOVA_HOME/runs: task logs, results)
    #[arg(long)]
    pub with_runs: bool,

    /// Encrypt every object and the manifest with this age key file (see nova backup keygen)
    /// [default: nova.yaml's backup.key]
    #[arg(long, value_name = "KEYFILE")]
    pub encrypt: Option<std::path::PathBuf>,

    /// The age key file that opens encrypted backups [default: nova.yaml's backup.key]
    #[arg(long, global = true, value_name = "KEYFILE")]
    pub key: Option<std::path::PathBuf>,

    /// The queue's store: sqlite:PATH or redis://HOST:PORT/DB. On Redis the queue and the
    /// audit log live there, not in the backup; the backup signs that audit log's head and is
    /// recorded in it [default: nova.yaml's store, else the workspace database]
    #[arg(
        long,
        global = true,
        env = "NOVA_STORE",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub store: Option<String>,
}

impl BackupArgs {
    pub fn store_choice(&self) -> crate::store_url::StoreChoice {
        crate::store_url::StoreChoice {
            store: self.store.clone(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum BackupAction {
    /// The complete backups in the target, oldest first
    List,
    /// Download every object of a backup and check it against its SHA-256 (exit 1 when any
    /// is missing or changed)
    Verify {
        /// The backup's id [default: the newest]
        id: Option<String>,
    },
    /// Keep the newest N backups: remove the older ones' manifests, then every object no
    /// remaining backup uses (signed audit checkpoints are always kept)
    Prune {
        /// How many backups to keep [default: nova.yaml's backup.keep]
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
    },
    /// Remove the target's stale locks (left by a backup, verify, restore or prune whose process
    /// is gone) and list the ones still held
    Unlock,
    /// Write a new age key file for --encrypt (readable by its owner only; never replaces a file)
    Keygen {
        /// Where to write the key; keep a copy away from the backups
        file: std::path::PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup's id (see nova backup list)
    pub id: String,

    /// The folder to rebuild the workspace in; it must be empty or missing
    #[arg(long, value_name = "DIR")]
    pub to: std::path::PathBuf,

    /// Where the backup is kept [default: nova.yaml's backup.to]
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,

    /// The age key file that opens an encrypted backup [default: nova.yaml's backup.key]
    #[arg(long, value_name = "KEYFILE")]
    pub key: Option<std::path::PathBuf>,

    /// Restore over an existing workspace: refused while its database is in use; the
    /// replaced files are moved to DIR/.nova-replaced-TIME
    #[arg(long)]
    pub force: bool,

    /// The restored workspace's queue store, whose audit log records the restore:
    /// sqlite:PATH or redis://HOST:PORT/DB [default: its nova.yaml's store, else its database]
    #[arg(long, env = "NOVA_STORE", hide_env_values = true, value_name = "URL")]
    pub store: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(subcommand)]
    pub action: ReportAction,
}

#[derive(Debug, Subcommand)]
pub enum ReportAction {
    /// Summarize JUnit XML results (pytest --junitxml, cargo-nextest, go-junit-report,
    /// jest-junit, Maven Surefire): totals, suites, failures, flaky, skipped and slowest
    /// tests. Exit 0 when all passed, 1 when any failed, 2 for a file that is not JUnit XML
    Tests(ReportTestsArgs),
}

#[derive(Debug, Args)]
pub struct ReportTestsArgs {
    /// JUnit XML files
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<std::path::PathBuf>,

    /// Earlier results to compare with: lists what regressed and what was fixed
    #[arg(long, num_args = 1.., value_name = "OLD")]
    pub compare: Vec<std::path::PathBuf>,

    /// Also write the Markdown to this file (stdout then stays quiet unless --json)
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub store: StoreArg,

    #[command(subcommand)]
    pub action: AuditAction,
}

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Show records, oldest first
    Log {
        /// Only records from this time on: 2026-11-24T09:00:00Z, or a duration back (2h, 7d)
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// Only this action (`run.*` for a family)
        #[arg(long, value_name = "A")]
        action: Option<String>,
        /// Only the last N of them
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Check the whole chain; exit 1 naming the first record that does not hold
    Verify {
        /// Also check the signed audit checkpoints that backups stored in this target (a folder
        /// or s3://bucket/prefix): each must name a record still in the chain, with the same hash
        #[arg(long, value_name = "URL")]
        checkpoints: Option<String>,
        /// The checkpoints' verifier key (NAME+ID+KEY) [default: this user's signing key]
        #[arg(long, value_name = "VKEY", requires = "checkpoints")]
        verifier_key: Option<String>,
    },
    /// Write every record as JSON lines or CSV
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// Write to this file instead of stdout
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// The ISO/IEC 27001:2022 controls nova evidences, with how many records each has
    Controls,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// Drive the queue server over gRPC, then the same store directly, and compare
    Queue(BenchQueueArgs),
    /// The cost of recording a KPI (counter, histogram, timer) per call
    Kpi(BenchKpiArgs),
    /// Audit log appends per second (each a durable transaction)
    Audit(BenchAuditArgs),
    /// Embedded policy decision latency, evaluated and cached
    Policy(BenchPolicyArgs),
    /// nova orchestrate's overhead on trivial tasks, against xargs -P
    Orchestrate(BenchOrchestrateArgs),
    /// One sampling pass with and without NVML, and nova monitor's CPU use
    Monitor(BenchMonitorArgs),
    /// What an open dashboard costs nova serve during a run: CPU and events per second
    Dashboard(BenchDashboardArgs),
}

#[derive(Debug, Args)]
pub struct BenchDashboardArgs {
    /// Trivial tasks in the run
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    pub tasks: u32,

    /// Pages watching the run in the second pass
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub pages: u32,

    /// nova orchestrate's --jobs [default: the number of cores]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub jobs: Option<u32>,
}

#[derive(Debug, Args)]
pub struct BenchMonitorArgs {
    /// Sampling passes to time, each way
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub passes: u32,

    /// How long to run nova monitor, in seconds
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(3..=3_600))]
    pub seconds: u32,

    /// nova monitor's interval
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub interval: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct BenchOrchestrateArgs {
    /// Tasks of `true` to run
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub tasks: u32,

    /// Tasks at once (nova --jobs, xargs -P)
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,

    /// Rounds of nova, xargs and GNU parallel in turn; the report gives each
    /// one's median and every round's ratio (a busy machine's noise shows)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: u32,
}

#[derive(Debug, Args)]
pub struct BenchPolicyArgs {
    /// Decisions per round
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub decisions: u64,
}

#[derive(Debug, Args)]
pub struct BenchAuditArgs {
    /// Records to append
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub records: u64,

    /// Append to the chain in this SQLite file (default: a temporary one)
    #[arg(long, value_name = "PATH", conflicts_with = "redis")]
    pub db: Option<PathBuf>,

    /// Append to the chain in this Redis instead (redis://HOST:PORT/DB)
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
}

#[derive(Debug, Args)]
pub struct BenchKpiArgs {
    /// Calls per thread
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub calls: u64,

    /// Threads recording into the same metric at once (the second round)
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
}

#[derive(Debug, Args)]
pub struct BenchQueueArgs {
    /// sqlite:PATH or redis://HOST:PORT/DB; default: a new SQLite file in a temporary folder.
    /// On Redis the run uses keys of its own and deletes them afterwards
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,

    /// Tasks per run
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub tasks: u32,

    /// Concurrent producers
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub producers: u32,

    /// Concurrent workers
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,

    /// Tasks per enqueue, dequeue and ack call (1: one call per task)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub batch: u32,

    /// Only the run over gRPC (skip the direct one)
    #[arg(long)]
    pub grpc_only: bool,

    /// Unary calls, as clients of the original proto make them: gRPC
    /// producers call Enqueue per task (with --batch 1) and workers Dequeue
    /// and Ack (with its `next`), instead of one EnqueueStream or Work
    /// stream each
    #[arg(long)]
    pub unary: bool,
    /// gRPC workers open their Work streams with quiet acks: the server
    /// answers no applied ack, and each worker's stream ends cleanly once
    /// all its acks were applied (`nova worker` reads every ack's answer)
    #[arg(long, conflicts_with = "unary")]
    pub quiet_acks: bool,
    /// Worker threads of the gRPC run's server, which runs on a runtime of
    /// its own as `nova serve` would, 1 to 1024 [default: as `nova serve --threads`]
    #[arg(long, value_name = "N", value_parser = thread_count)]
    pub server_threads: Option<std::num::NonZeroUsize>,
    /// Worker threads of the runtime the producers and workers run on, 1 to
    /// 1024 [default: the CPUs the server's threads leave, at least one]
    #[arg(long, value_name = "N", value_parser = thread_count)]
    pub client_threads: Option<std::num::NonZeroUsize>,
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// A running server (http://HOST:PORT); without it, an in-process server on the workspace's store
    #[arg(long, value_name = "URL", global = true)]
    pub server: Option<String>,

    /// File holding the bearer token for --server
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,

    #[command(flatten)]
    pub tls: ClientTlsArgs,

    #[command(flatten)]
    pub store: StoreArg,

    #[command(subcommand)]
    pub action: QueueAction,
}

#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// Add a task
    Enqueue {
        /// The task's type
        #[arg(value_name = "TYPE")]
        kind: String,
        /// The payload, a JSON document
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Metadata entries
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
        #[arg(long, default_value = "default")]
        queue: String,
        /// Higher runs first
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// Run no earlier than this from now (e.g. 5s, 10m)
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Option<std::time::Duration>,
        /// Attempts before the task is parked as FAILED
        #[arg(long, default_value_t = 1)]
        max_attempts: u32,
        /// A second enqueue with the same key returns the first task
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// List tasks, oldest first
    List {
        /// PENDING, IN_PROGRESS, COMPLETED, FAILED or CANCELLED
        #[arg(long)]
        status: Option<String>,
        /// Only tasks of this queue
        #[arg(long)]
        queue: Option<String>,
        /// At most this many tasks
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Show one task
    Get { id: String },
    /// Cancel a pending or running task
    Cancel { id: String },
    /// Put a failed or cancelled task back in the queue
    Retry { id: String },
    /// Counts by queue and status, oldest pending age, leases in flight, paused queues
    Stats,
    /// Workers connected now (nova worker on a Work stream): host, version, slots and the tasks each holds
    Workers,
    /// Stop handing out a queue's tasks (running ones finish; enqueues are still taken)
    Pause { queue: String },
    /// Hand out a paused queue's tasks again
    Resume { queue: String },
    /// Delete finished tasks (completed, failed, cancelled) older than a duration, from the store itself
    Purge {
        /// Tasks finished longer ago than this (as 7d or 12h); 0s takes every finished task
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        older_than: std::time::Duration,
        /// Only this queue
        #[arg(long)]
        queue: Option<String>,
    },
}

/// Most worker threads a runtime may be asked for: tokio starts them all at
/// once and aborts the process when the system refuses one (a million asked
/// for did that), so a count past any machine's use is refused here.
const MAX_THREADS: usize = 1024;

/// A thread count from 1 to [`MAX_THREADS`].
fn thread_count(text: &str) -> Result<std::num::NonZeroUsize, String> {
    text.parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_THREADS).contains(n))
        .and_then(std::num::NonZeroUsize::new)
        .ok_or_else(|| format!("expected a number of threads from 1 to {MAX_THREADS}"))
}

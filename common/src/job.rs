//! Job kinds and their arguments, parsed and checked against the limits.
//!
//! The master checks every job at submit time, so a bad argument is an
//! `INVALID_ARGUMENT` naming the field and the limit and never reaches a
//! worker; the worker parses the same text again with the same code.

use crate::pb::{JobKind, JobState};

/// Limits on what a job may ask for. The master's flags set them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest n of a fib job.
    pub max_fib_n: u64,
    /// The most decimal digits of a prime job's n.
    pub max_prime_digits: usize,
    /// The longest sleep job, in milliseconds.
    pub max_sleep_ms: u64,
    /// The most jobs in one submit.
    pub max_batch_jobs: usize,
    /// The longest argument of a Python job (its name and JSON), in bytes.
    pub max_python_arg_bytes: usize,
}

impl Limits {
    /// No limits: for a child, which parses what the master already checked.
    pub fn unchecked() -> Limits {
        Limits {
            max_fib_n: u64::MAX,
            max_prime_digits: usize::MAX,
            max_sleep_ms: u64::MAX,
            max_batch_jobs: usize::MAX,
            max_python_arg_bytes: usize::MAX,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_fib_n: 10_000_000,
            max_prime_digits: 4_000,
            max_sleep_ms: 24 * 3600 * 1000,
            max_batch_jobs: 100_000,
            max_python_arg_bytes: 1024 * 1024,
        }
    }
}

/// A job's argument, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobArgs {
    /// F(n).
    Fib(u64),
    /// Is n prime? n is the decimal text without leading zeros.
    Prime(String),
    /// Sleep this many milliseconds.
    Sleep(u64),
    /// Call a Python function: the argument is checked, not taken apart
    /// (the worker's interpreter reads it).
    Python,
}

impl JobArgs {
    /// Parses `arg` for a job of `kind` (the wire's enum value), checking it
    /// against `limits`. The error names what is wrong and the limit, not the
    /// field: the caller knows where the argument came from.
    pub fn parse(kind: i32, arg: &str, limits: &Limits) -> Result<JobArgs, String> {
        match JobKind::try_from(kind) {
            Ok(JobKind::Fib) => {
                let n = parse_u64("fib n", arg)?;
                if n > limits.max_fib_n {
                    return Err(format!(
                        "fib n {n} is over the limit of {} (master flag --max-fib-n)",
                        limits.max_fib_n
                    ));
                }
                Ok(JobArgs::Fib(n))
            }
            Ok(JobKind::Prime) => parse_prime(arg, limits.max_prime_digits).map(JobArgs::Prime),
            Ok(JobKind::Sleep) => {
                let ms = parse_u64("sleep ms", arg)?;
                if ms > limits.max_sleep_ms {
                    return Err(format!(
                        "sleep ms {ms} is over the limit of {} (master flag --max-sleep-ms)",
                        limits.max_sleep_ms
                    ));
                }
                Ok(JobArgs::Sleep(ms))
            }
            Ok(JobKind::Python) => {
                check_python(arg, limits.max_python_arg_bytes).map(|()| JobArgs::Python)
            }
            Ok(JobKind::Unspecified) | Err(_) => Err(format!(
                "unknown job kind {kind}; the kinds are fib (1), prime (2), sleep (3) and python (4)"
            )),
        }
    }

    /// The kind of this job.
    pub fn kind(&self) -> JobKind {
        match self {
            JobArgs::Fib(_) => JobKind::Fib,
            JobArgs::Prime(_) => JobKind::Prime,
            JobArgs::Sleep(_) => JobKind::Sleep,
            JobArgs::Python => JobKind::Python,
        }
    }
}

/// The name of a kind as the CLI spells it.
pub fn kind_name(kind: i32) -> &'static str {
    match JobKind::try_from(kind) {
        Ok(JobKind::Fib) => "fib",
        Ok(JobKind::Prime) => "prime",
        Ok(JobKind::Sleep) => "sleep",
        Ok(JobKind::Python) => "python",
        _ => "unknown",
    }
}

/// The name of a state as the CLI and the dashboard spell it.
pub fn state_name(state: i32) -> &'static str {
    match JobState::try_from(state) {
        Ok(JobState::Queued) => "queued",
        Ok(JobState::Running) => "running",
        Ok(JobState::Succeeded) => "succeeded",
        Ok(JobState::Failed) => "failed",
        Ok(JobState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

/// Parses a state name, or `all` (`Unspecified`).
pub fn parse_state(name: &str) -> Result<JobState, String> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "queued" => JobState::Queued,
        "running" => JobState::Running,
        "succeeded" => JobState::Succeeded,
        "failed" => JobState::Failed,
        "cancelled" | "canceled" => JobState::Cancelled,
        "all" => JobState::Unspecified,
        _ => {
            return Err(format!(
                "unknown state {name:?}; use queued, running, succeeded, failed, cancelled or all"
            ));
        }
    })
}

/// Parses a kind name as the CLI spells it.
pub fn parse_kind(name: &str) -> Result<JobKind, String> {
    match name.to_ascii_lowercase().as_str() {
        "fib" => Ok(JobKind::Fib),
        "prime" => Ok(JobKind::Prime),
        "sleep" => Ok(JobKind::Sleep),
        "python" => Ok(JobKind::Python),
        _ => Err(format!(
            "unknown job kind {name:?}; the kinds are fib, prime, sleep and python"
        )),
    }
}

/// Which slots a job needs on a worker: CPU jobs go to its process pool,
/// IO jobs (sleep) to its async slots, Python jobs to its interpreter
/// processes. The master keeps a queue and the worker grants credit per
/// class, so each is indexed by [`JobClass::index`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobClass {
    /// Computed in a child process (fib, prime).
    Cpu = 0,
    /// Waits without computing (sleep), on the worker's async slots.
    Io = 1,
    /// A Python function, in one of the worker's interpreter processes.
    Python = 2,
}

impl JobClass {
    /// How many classes there are: the length of per-class arrays.
    pub const COUNT: usize = 3;

    /// Every class, in index order.
    pub const ALL: [JobClass; JobClass::COUNT] = [JobClass::Cpu, JobClass::Io, JobClass::Python];

    /// The class of a job of `kind`. A kind this build does not know is
    /// taken for CPU work, where it fails in the child with a reason.
    pub fn of(kind: JobKind) -> JobClass {
        match kind {
            JobKind::Sleep => JobClass::Io,
            JobKind::Python => JobClass::Python,
            _ => JobClass::Cpu,
        }
    }

    /// The class of a job whose kind is the wire value `kind`.
    pub fn of_wire(kind: i32) -> JobClass {
        JobClass::of(JobKind::try_from(kind).unwrap_or(JobKind::Unspecified))
    }

    /// The class's position in per-class arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The module a Python job's argument names: the text before its first
/// `:` (all of it if there is none; the master refuses such an argument).
pub fn python_module(arg: &str) -> &str {
    let name = arg.split_once(' ').map_or(arg, |(name, _)| name);
    name.split_once(':').map_or(name, |(module, _)| module)
}

/// Whether `module` is one of `prefixes` or inside one: `pkg` allows `pkg`
/// and `pkg.sub`, not `pkg2`.
pub fn module_allowed<S: AsRef<str>>(prefixes: &[S], module: &str) -> bool {
    prefixes.iter().any(|p| {
        let p = p.as_ref();
        module
            .strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    })
}

/// Checks a Python module name or prefix (`pkg.mod`), for the worker's
/// `--python-modules`.
pub fn check_module_name(name: &str) -> Result<(), String> {
    check_dotted("module", name)
}

/// Checks a dotted Python name (`pkg.mod`, `Class.method`): identifiers
/// joined by dots.
fn check_dotted(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} is empty"));
    }
    for part in name.split('.') {
        let mut chars = part.chars();
        let ok = chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
            && chars.all(|c| c == '_' || c.is_alphanumeric());
        if !ok {
            return Err(format!(
                "{what} {:?} is not a dotted Python name (identifiers joined by dots)",
                shorten(name)
            ));
        }
    }
    Ok(())
}

/// Checks a Python job's argument: `module:qualname`, then optionally a
/// space and a JSON object with `args` (an array) and `kwargs` (an
/// object), each optional.
fn check_python(arg: &str, max_bytes: usize) -> Result<(), String> {
    if arg.len() > max_bytes {
        return Err(format!(
            "python argument is {} bytes, over the limit of {max_bytes} (master flag --max-python-arg-bytes)",
            arg.len()
        ));
    }
    let (name, json) = match arg.split_once(' ') {
        Some((name, json)) => (name, Some(json)),
        None => (arg, None),
    };
    let Some((module, qualname)) = name.split_once(':') else {
        return Err(format!(
            "python function {:?} has no ':'; expected module:qualname, e.g. pkg.tasks:resize",
            shorten(name)
        ));
    };
    check_dotted("python module", module)?;
    check_dotted("python qualname", qualname)?;
    let Some(json) = json else {
        return Ok(());
    };
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| format!("python arguments are not valid JSON: {e}"))?;
    let serde_json::Value::Object(fields) = value else {
        return Err(
            "python arguments must be a JSON object {\"args\": [...], \"kwargs\": {...}}".into(),
        );
    };
    for (key, v) in &fields {
        match (key.as_str(), v) {
            ("args", serde_json::Value::Array(_)) | ("kwargs", serde_json::Value::Object(_)) => {}
            ("args", _) => return Err("python arguments: \"args\" must be a JSON array".into()),
            ("kwargs", _) => {
                return Err("python arguments: \"kwargs\" must be a JSON object".into());
            }
            (other, _) => {
                return Err(format!(
                    "python arguments: unknown key {:?}; the keys are \"args\" and \"kwargs\"",
                    shorten(other)
                ));
            }
        }
    }
    Ok(())
}

fn parse_u64(what: &str, arg: &str) -> Result<u64, String> {
    if arg.is_empty() {
        return Err(format!("{what} is empty; expected a non-negative integer"));
    }
    if !arg.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{what} {:?} is not a non-negative decimal integer",
            shorten(arg)
        ));
    }
    arg.parse::<u64>()
        .map_err(|_| format!("{what} {} does not fit in 64 bits", shorten(arg)))
}

fn parse_prime(arg: &str, max_digits: usize) -> Result<String, String> {
    if arg.is_empty() {
        return Err("prime n is empty; expected a non-negative decimal integer".into());
    }
    if arg.len() > max_digits {
        return Err(format!(
            "prime n has {} characters, over the limit of {max_digits} digits (master flag --max-prime-digits)",
            arg.len()
        ));
    }
    if let Some(pos) = arg.bytes().position(|b| !b.is_ascii_digit()) {
        return Err(format!(
            "prime n {:?} is not a non-negative decimal integer (character {} is {:?})",
            shorten(arg),
            pos + 1,
            arg[pos..].chars().next().unwrap_or('?')
        ));
    }
    let trimmed = arg.trim_start_matches('0');
    Ok(if trimmed.is_empty() { "0" } else { trimmed }.to_string())
}

/// Cuts long text for an error message, saying how long it was.
fn shorten(s: &str) -> String {
    const MAX: usize = 40;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kind: JobKind, arg: &str) -> Result<JobArgs, String> {
        JobArgs::parse(kind as i32, arg, &Limits::default())
    }

    #[test]
    fn parses_good_arguments() {
        assert_eq!(parse(JobKind::Fib, "20"), Ok(JobArgs::Fib(20)));
        assert_eq!(
            parse(JobKind::Fib, "10000000"),
            Ok(JobArgs::Fib(10_000_000))
        );
        assert_eq!(
            parse(JobKind::Prime, "0017"),
            Ok(JobArgs::Prime("17".into()))
        );
        assert_eq!(parse(JobKind::Prime, "000"), Ok(JobArgs::Prime("0".into())));
        assert_eq!(parse(JobKind::Sleep, "500"), Ok(JobArgs::Sleep(500)));
    }

    #[test]
    fn refuses_bad_arguments_naming_the_limit() {
        assert!(
            parse(JobKind::Fib, "-1")
                .unwrap_err()
                .contains("non-negative")
        );
        let e = parse(JobKind::Fib, "1000000000000").unwrap_err();
        assert!(e.contains("10000000") && e.contains("--max-fib-n"), "{e}");
        let e = parse(JobKind::Fib, "99999999999999999999999").unwrap_err();
        assert!(e.contains("64 bits"), "{e}");
        let e = parse(JobKind::Prime, "12a").unwrap_err();
        assert!(e.contains("character 3"), "{e}");
        assert!(parse(JobKind::Prime, "").unwrap_err().contains("empty"));
        let e = parse(JobKind::Prime, &"7".repeat(100_000)).unwrap_err();
        assert!(e.contains("100000") && e.contains("4000"), "{e}");
        let e = JobArgs::parse(9, "1", &Limits::default()).unwrap_err();
        assert!(e.contains("unknown job kind 9"), "{e}");
    }

    #[test]
    fn checks_python_arguments() {
        let ok = |arg: &str| assert_eq!(parse(JobKind::Python, arg), Ok(JobArgs::Python), "{arg}");
        ok("pkg.tasks:resize");
        ok("m:C.method {}");
        ok(r#"m:f {"args":[1,"x",[2]],"kwargs":{"k":null}}"#);
        ok("_priv.m2:f {\"args\":[]}");
        let err = |arg: &str, want: &str| {
            let e = parse(JobKind::Python, arg).unwrap_err();
            assert!(e.contains(want), "{arg}: {e}");
        };
        err("pkg.tasks", "no ':'");
        err(":f", "python module is empty");
        err("m:", "python qualname is empty");
        err("a..b:f", "not a dotted Python name");
        err("m:<lambda>", "not a dotted Python name");
        err("m:f.<locals>.g", "not a dotted Python name");
        err("1m:f", "not a dotted Python name");
        err("m:f [1]", "must be a JSON object");
        err("m:f {", "not valid JSON");
        err(r#"m:f {"args":{}}"#, "\"args\" must be a JSON array");
        err(r#"m:f {"kwargs":[]}"#, "\"kwargs\" must be a JSON object");
        err(r#"m:f {"arg":[]}"#, "unknown key");
        let limits = Limits {
            max_python_arg_bytes: 20,
            ..Limits::default()
        };
        let e = JobArgs::parse(JobKind::Python as i32, "m:f {\"args\":[12345678]}", &limits)
            .unwrap_err();
        assert!(
            e.contains("over the limit of 20") && e.contains("--max-python-arg-bytes"),
            "{e}"
        );
    }

    #[test]
    fn python_modules_match_whole_prefixes() {
        assert_eq!(python_module("pkg.sub:f {\"args\":[\"a:b\"]}"), "pkg.sub");
        assert_eq!(python_module("pkg"), "pkg");
        let allowed = ["pkg", "other.tasks"];
        assert!(module_allowed(&allowed, "pkg"));
        assert!(module_allowed(&allowed, "pkg.sub"));
        assert!(module_allowed(&allowed, "other.tasks.x"));
        assert!(!module_allowed(&allowed, "pkg2"));
        assert!(!module_allowed(&allowed, "other"));
        assert!(!module_allowed(&[] as &[&str], "pkg"));
    }

    #[test]
    fn kind_names_round_trip() {
        for kind in [
            JobKind::Fib,
            JobKind::Prime,
            JobKind::Sleep,
            JobKind::Python,
        ] {
            assert_eq!(parse_kind(kind_name(kind as i32)), Ok(kind));
        }
        assert!(parse_kind("fibonacci").is_err());
    }

    #[test]
    fn sleep_is_io_and_the_rest_cpu() {
        assert_eq!(JobClass::of(JobKind::Sleep), JobClass::Io);
        assert_eq!(JobClass::of(JobKind::Fib), JobClass::Cpu);
        assert_eq!(JobClass::of(JobKind::Prime), JobClass::Cpu);
        assert_eq!(JobClass::of_wire(JobKind::Sleep as i32), JobClass::Io);
        assert_eq!(JobClass::of(JobKind::Python), JobClass::Python);
        // An unknown kind runs (and fails with a reason) in a child.
        assert_eq!(JobClass::of_wire(99), JobClass::Cpu);
        for (i, class) in JobClass::ALL.into_iter().enumerate() {
            assert_eq!(class.index(), i);
        }
    }
}

//! Python functions as jobs. The worker starts `--python-processes`
//! interpreters, each running [`RUNNER`] (passed with `-c`), as slots of
//! its process pool beside the Rust children: the same frames over pipes,
//! the same process groups, kills, timeouts, recycling and drain. The
//! runner imports a job's module only if `--python-modules` allows it, and
//! the engine checks the same list before it hands the job over.

use drover_common::pb;

/// The runner script: it speaks the child frames with a protobuf codec of
/// its own, so the interpreter needs nothing installed but the jobs'
/// modules.
pub const RUNNER: &str = include_str!("runner.py");

/// Why this worker refuses a Python job, or `None` if it may run it. The
/// refusal is not retried: the master sends a job only to a worker that
/// allows its module, so this is a worker whose flags changed, or an old
/// master.
pub fn refusal(modules: Option<&[String]>, arg: &str) -> Option<pb::JobFailure> {
    let module = drover_common::python_module(arg);
    let reason = match modules {
        None => format!(
            "this worker runs no Python jobs (module {module}); start it with --python and --python-modules"
        ),
        Some(allowed) if !drover_common::module_allowed(allowed, module) => format!(
            "module {module} is not allowed on this worker (--python-modules {})",
            allowed.join(",")
        ),
        Some(_) => return None,
    };
    Some(pb::JobFailure {
        reason,
        retryable: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_modules_outside_the_list_naming_the_flag() {
        let allowed = vec!["app".to_string(), "lib.jobs".to_string()];
        assert_eq!(refusal(Some(&allowed), "app.tasks:f {}"), None);
        let f = refusal(Some(&allowed), "os:system {\"args\":[\"true\"]}").unwrap();
        assert_eq!(
            f.reason,
            "module os is not allowed on this worker (--python-modules app,lib.jobs)"
        );
        assert!(!f.retryable);
        let f = refusal(None, "app:f").unwrap();
        assert!(f.reason.contains("--python"), "{}", f.reason);
    }
}

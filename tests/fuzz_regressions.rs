//! What the fuzzers found, kept forever on the stable toolchain: every input under
//! `fuzz/regressions/TARGET/` (each once crashed, hung or broke a property) goes through
//! its target's entry point again, and so does each target's corpus under
//! `fuzz/corpus/TARGET/`, within a bound of time. The properties are the targets' own
//! (`mailgate::fuzzing`); nightly and cargo-fuzz are not needed here (docs/fuzzing.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mailgate::fuzzing::TARGETS;

/// The corpus replay's share of time per target (a debug build; the whole replay stays
/// within a few seconds).
const CORPUS_BUDGET: Duration = Duration::from_millis(1500);

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.retain(|p| p.is_file());
    out.sort();
    out
}

/// The longest one input may take (a debug build): past it, the input hangs the target,
/// which is a finding as a crash is.
const PER_INPUT: Duration = Duration::from_secs(20);

fn replay(target: &str, run: fn(&[u8]), path: &Path) {
    let data = std::fs::read(path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let caught = std::panic::catch_unwind(|| run(&data));
        let _ = tx.send(caught.is_ok());
    });
    match rx.recv_timeout(PER_INPUT) {
        Ok(passed) => assert!(
            passed,
            "{target}: {} breaks a property again",
            path.display()
        ),
        Err(_) => panic!(
            "{target}: {} still runs after {PER_INPUT:?}",
            path.display()
        ),
    }
}

#[test]
fn every_regression_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for (target, run) in TARGETS {
        for path in files(&root.join(target)) {
            replay(target, run, &path);
            replayed += 1;
        }
    }
    // Every folder belongs to a target (a misspelt one would never be replayed).
    for dir in std::fs::read_dir(&root).unwrap() {
        let name = dir.unwrap().file_name().into_string().unwrap();
        assert!(
            name == "README.md" || TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/regressions/{name} is no target's"
        );
    }
    println!("{replayed} regression inputs replayed");
}

#[test]
fn each_targets_corpus_replays_within_its_bound() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (target, run) in TARGETS {
        let all = files(&root.join(target));
        assert!(!all.is_empty(), "fuzz/corpus/{target} has no seeds");
        let started = Instant::now();
        let mut n = 0;
        for path in &all {
            if started.elapsed() > CORPUS_BUDGET {
                break;
            }
            replay(target, run, path);
            n += 1;
        }
        println!("{target}: {n} of {} corpus inputs replayed", all.len());
    }
}

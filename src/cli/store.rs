//! `mailgate store check` and `mailgate store salvage OUT`: work on the store file
//! directly, so they need the daemon stopped (the daemon holds the file's lock).

use std::path::PathBuf;

use clap::Subcommand;

use super::exit;
use crate::config::Config;
use crate::store::Store;
use crate::text::counted;

/// What to do with the store.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Check a stopped daemon's store: integrity, every body against its checksum, and
    /// the indexes against the records; exit 0 only when nothing is wrong.
    Check,
    /// Copy every readable record and body into a new store at OUT and report what could
    /// not be read; then point `store.path` at OUT.
    Salvage {
        /// The new store file (must not exist).
        out: PathBuf,
    },
}

/// `3 bodies (1 in a file, 24.1 MB)`: the bodies `store check` verified.
fn bodies_checked(report: &crate::store::CheckReport) -> String {
    let bodies = if report.bodies_ok == 1 {
        "1 body".to_string()
    } else {
        format!("{} bodies", report.bodies_ok)
    };
    match report.body_files {
        0 => bodies,
        n => format!(
            "{bodies} ({n} in {}, {:.1} MB)",
            if n == 1 { "a file" } else { "files" },
            report.body_file_bytes as f64 / (1024.0 * 1024.0)
        ),
    }
}

/// Runs a store command.
pub async fn store(config: &Config, command: &StoreCommand) -> i32 {
    let path = &config.store.path;
    match command {
        StoreCommand::Check => {
            let p = path.clone();
            match tokio::task::spawn_blocking(move || Store::check(&p)).await {
                Ok(Ok(report)) => {
                    println!(
                        "{}: integrity {}, {}, {} verified, {}",
                        path.display(),
                        if report.integrity_ok { "ok" } else { "FAILED" },
                        counted(report.records, "record"),
                        bodies_checked(&report),
                        counted(report.problems.len() as u64, "problem")
                    );
                    for p in &report.problems {
                        println!("  {p}");
                    }
                    if report.problems.is_empty() {
                        exit::OK
                    } else {
                        println!(
                            "Copy what is readable into a new store with mailgate store salvage NEW.redb, then set store.path to it."
                        );
                        exit::FAILED
                    }
                }
                Ok(Err(e)) => {
                    eprintln!("mailgate: {e}");
                    exit::FAILED
                }
                Err(e) => {
                    eprintln!("mailgate: the check stopped: {e}");
                    exit::FAILED
                }
            }
        }
        StoreCommand::Salvage { out } => match Store::salvage(path, out).await {
            Ok(r) => {
                println!(
                    "{} -> {}: {} copied, {} kept without their body, {} could not be read",
                    path.display(),
                    out.display(),
                    counted(r.copied, "message"),
                    counted(r.history_only, "finished record"),
                    r.lost.len()
                );
                for l in &r.lost {
                    println!("  lost: {l}");
                }
                println!(
                    "Set store.path = \"{}\" in the configuration and start mailgate.",
                    out.display()
                );
                exit::OK
            }
            Err(e) => {
                eprintln!("mailgate: {e}");
                exit::FAILED
            }
        },
    }
}

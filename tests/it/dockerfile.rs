//! Keeps the Dockerfile honest without a container engine: every path it copies from the
//! repository exists, every crawlq subcommand it runs exists, and the volume holds the
//! database the image points crawlq at.

use std::path::Path;
use std::process::Command;

fn dockerfile() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .expect("the repository has a Dockerfile")
}

/// Instructions with their continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    joined
        .into_iter()
        .filter_map(|i| {
            let (word, rest) = i.split_once(char::is_whitespace)?;
            Some((word.to_ascii_uppercase(), rest.trim().to_owned()))
        })
        .collect()
}

/// The crawlq arguments of an exec-form list such as `["crawlq", "healthcheck"]`.
fn exec_form(list: &str) -> Vec<String> {
    serde_json::from_str(list).unwrap_or_else(|e| panic!("{list:?} is not exec form: {e}"))
}

#[test]
fn every_copied_path_exists_in_the_repository() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let copies: Vec<String> = instructions(&dockerfile())
        .into_iter()
        .filter(|(word, args)| word == "COPY" && !args.starts_with("--from"))
        .map(|(_, args)| args)
        .collect();
    assert!(!copies.is_empty());
    for args in copies {
        let parts: Vec<&str> = args.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(repo.join(source).exists(), "COPY {source}: not in the repo");
        }
    }
}

#[test]
fn the_subcommands_it_runs_exist() {
    let all = instructions(&dockerfile());
    let find = |word: &str| {
        all.iter()
            .find(|(w, _)| w == word)
            .map(|(_, args)| args.clone())
            .unwrap_or_else(|| panic!("the Dockerfile has no {word}"))
    };
    assert_eq!(exec_form(&find("ENTRYPOINT")), ["crawlq"]);
    let health = find("HEALTHCHECK");
    let health = exec_form(health[health.find("CMD").expect("HEALTHCHECK CMD") + 3..].trim());
    assert_eq!(health[0], "crawlq");
    for args in [exec_form(&find("CMD")), health[1..].to_vec()] {
        let out = Command::new(env!("CARGO_BIN_EXE_crawlq"))
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "crawlq {args:?} is not a command: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_database_lives_in_the_volume() {
    let all = instructions(&dockerfile());
    let volume = all
        .iter()
        .find(|(w, _)| w == "VOLUME")
        .map(|(_, a)| {
            a.trim_matches(|c| c == '[' || c == ']' || c == '"')
                .to_owned()
        })
        .expect("a VOLUME");
    let env = all
        .iter()
        .filter(|(w, _)| w == "ENV")
        .flat_map(|(_, a)| a.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find_map(|pair| {
            pair.strip_prefix("CRAWLQ__DATABASE__URL=")
                .map(str::to_owned)
        })
        .expect("ENV CRAWLQ__DATABASE__URL");
    assert!(
        Path::new(&env).starts_with(&volume),
        "database {env} is outside the volume {volume}"
    );
}

#[test]
fn base_images_are_build_arguments_and_the_context_leaves_out_builds_and_data() {
    let steps = instructions(&dockerfile());
    let args: Vec<&str> = steps
        .iter()
        .filter(|(word, _)| word == "ARG")
        .filter_map(|(_, rest)| rest.split('=').next())
        .collect();
    let froms: Vec<&str> = steps
        .iter()
        .filter(|(word, _)| word == "FROM")
        .map(|(_, rest)| rest.split_whitespace().next().unwrap_or_default())
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    for from in &froms {
        let arg = from
            .strip_prefix("${")
            .and_then(|a| a.strip_suffix('}'))
            .unwrap_or_else(|| panic!("FROM {from} is not a build argument"));
        assert!(args.contains(&arg), "FROM {from}: no ARG {arg}");
    }
    let ignored = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.dockerignore"))
        .expect("the repository has a .dockerignore");
    let lines: Vec<&str> = ignored.lines().map(str::trim).collect();
    for needed in ["target", "data", "*.db", ".git"] {
        assert!(
            lines.contains(&needed),
            ".dockerignore lacks {needed}: {lines:?}"
        );
    }
}

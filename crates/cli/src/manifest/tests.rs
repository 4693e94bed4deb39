//! Unit tests of manifest reading: keys, substitution, several apps, errors with locations.

use super::*;
use std::cell::RefCell;

fn builtins() -> Builtins {
    Builtins {
        target_base: Some("localhost".into()),
        target_url: Some("http://127.0.0.1:8080".into()),
    }
}

fn err_text(r: Result<Manifest>) -> String {
    format!("{:#}", r.unwrap_err())
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn load(dir: &Path, only: Option<&str>) -> Result<Vec<Manifest>> {
    let given = BTreeSet::new();
    let b = builtins();
    let opts = LoadOptions {
        builtins: &b,
        ask: None,
        env_given: &given,
    };
    load_all(dir, &opts, only)
}

#[test]
fn services_in_both_forms_and_as_a_list() {
    let m = parse_stackato(
        "name: web\nservices:\n  mydb: mysql\n  redis: ${name}-cache\n",
        &builtins(),
    )
    .unwrap();
    assert_eq!(
        m.services,
        vec![
            ("mydb".to_string(), "mysql".to_string()),
            ("web-cache".to_string(), "redis".to_string())
        ]
    );
    let m = parse_stackato("services: [a, b]\n", &builtins()).unwrap();
    assert_eq!(m.services[1], ("b".to_string(), String::new()));
    let err = err_text(parse_stackato("services: 5\n", &builtins()));
    assert!(
        err.contains("NAME: TYPE") && err.contains("stackato.yml:1:1"),
        "{err}"
    );
}

#[test]
fn mem_sizes() {
    assert_eq!(parse_mem("256").unwrap(), 256);
    assert_eq!(parse_mem("256M").unwrap(), 256);
    assert_eq!(parse_mem("256mb").unwrap(), 256);
    assert_eq!(parse_mem("1.5G").unwrap(), 1536);
    assert_eq!(parse_mem(" 2GB ").unwrap(), 2048);
    assert!(parse_mem("lots").unwrap_err().to_string().contains("256M"));
    assert!(parse_mem("0").is_err());
    assert!(parse_mem("-5").is_err());
    assert!(parse_mem("12K").is_err());
}

#[test]
fn stackato_yml_keys() {
    let m = parse_stackato(
        "name: myapp\ninstances: 2\nmem: 1.5G\ndisk: 512\nurl: [www.example.com, api.example.com]\nbuildpack: https://g/bp.git\ncommand: python app.py\nenv:\n  DEBUG: 1\n  MODE: {default: prod}\nignores: [tmp/, '*.log']\ntimeout: 90\n",
        &builtins(),
    )
    .unwrap();
    assert_eq!(m.name.as_deref(), Some("myapp"));
    assert_eq!(m.instances, Some(2));
    assert_eq!((m.mem_mb, m.disk_mb), (Some(1536), Some(512)));
    assert_eq!(
        m.urls,
        Some(vec![
            "www.example.com".to_string(),
            "api.example.com".to_string()
        ])
    );
    assert_eq!(m.buildpack.as_deref(), Some("https://g/bp.git"));
    assert_eq!(m.command.as_deref(), Some("python app.py"));
    assert_eq!(m.env.get("DEBUG").map(String::as_str), Some("1"));
    assert_eq!(m.env.get("MODE").map(String::as_str), Some("prod"));
    assert_eq!(m.ignores, vec!["tmp/", "*.log"]);
    assert_eq!(m.timeout, Some(90));
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    assert!(
        !m.staging_config.contains_key("env"),
        "env values stay out of the uploaded config"
    );
    assert_eq!(m.staging_config["name"], "myapp");
}

#[test]
fn empty_url_list_means_no_route_and_string_url_is_one() {
    assert_eq!(
        parse_stackato("name: w\nurl: []\n", &builtins())
            .unwrap()
            .urls,
        Some(vec![])
    );
    assert_eq!(
        parse_stackato("urls: a.b\n", &builtins()).unwrap().urls,
        Some(vec!["a.b".to_string()])
    );
    assert_eq!(parse_stackato("name: w\n", &builtins()).unwrap().urls, None);
}

#[test]
fn substitution_of_keys_builtins_and_errors() {
    let m = parse_stackato(
        "name: shop\nurl: ${name}-api.${target-base}\nenv:\n  SELF: ${target-url}\n  SPACE: ${space-base}\n",
        &builtins(),
    )
    .unwrap();
    assert_eq!(m.urls, Some(vec!["shop-api.localhost".to_string()]));
    assert_eq!(m.env["SELF"], "http://127.0.0.1:8080");
    assert_eq!(m.env["SPACE"], "localhost");
    let word = parse_stackato("name: app-${random-word}\n", &builtins())
        .unwrap()
        .name
        .unwrap();
    assert!(word.len() > "app-".len() && !word.contains('$'), "{word}");
    let err = err_text(parse_stackato("mem: 64\nname: ${nope}\n", &builtins()));
    assert!(
        err.contains("stackato.yml:2:7: unknown symbol `${nope}`") && err.contains("hint"),
        "{err}"
    );
    let err = err_text(parse_stackato(
        "a: ${b}\nb: ${a}\nname: ${a}\n",
        &builtins(),
    ));
    assert!(err.contains("refers to itself"), "{err}");
    let err = parse_stackato("url: x.${target-base}\n", &Builtins::default()).unwrap_err();
    assert!(err.downcast_ref::<NeedsTarget>().is_some(), "{err}");
}

#[test]
fn properties_then_app_keys_then_top_level() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "manifest.yml",
        "properties:\n  tier: gold\nregion: eu\napplications:\n- name: api\n  url: ${name}-${tier}-${region}.${target-base}\n  services:\n    ${name}-cache: redis\n- name: web\n  region: us\n  properties:\n    tier: silver\n  env:\n    WHERE: ${tier}/${region}\n",
    );
    let apps = load(dir.path(), None).unwrap();
    assert_eq!(apps.len(), 2);
    assert_eq!(
        apps[0].urls,
        Some(vec!["api-gold-eu.localhost".to_string()])
    );
    assert_eq!(
        apps[0].services,
        vec![("api-cache".to_string(), "redis".to_string())]
    );
    assert_eq!(apps[1].env["WHERE"], "silver/us");
}

#[test]
fn several_apps_in_dependency_order_and_push_one_by_name() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "manifest.yml",
        "applications:\n- name: web\n  depends-on: [api]\n- name: api\n  depends-on: db\n- name: db\n  memory: 64M\n- name: lone\n",
    );
    let names = |apps: &[Manifest]| -> Vec<String> {
        apps.iter().map(|a| a.name.clone().unwrap()).collect()
    };
    assert_eq!(
        names(&load(dir.path(), None).unwrap()),
        ["db", "api", "web", "lone"]
    );
    let one = load(dir.path(), Some("db")).unwrap();
    assert_eq!(
        (names(&one), one[0].mem_mb),
        (vec!["db".to_string()], Some(64))
    );
    let err = load(dir.path(), Some("nope")).unwrap_err();
    assert!(err.downcast_ref::<crate::error::UsageError>().is_some());
    assert!(err.to_string().contains("web, api, db, lone"), "{err}");

    write(
        dir.path(),
        "manifest.yml",
        "applications:\n- name: a\n  depends-on: b\n- name: b\n  depends-on: a\n",
    );
    let err = load(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("cycle: a → b → a"), "{err}");
    assert!(err.contains("manifest.yml:3:3"), "{err}");
    write(
        dir.path(),
        "manifest.yml",
        "applications:\n- name: a\n- name: b\n  depends-on: ghost\n",
    );
    let err = load(dir.path(), None).unwrap_err().to_string();
    assert!(
        err.contains("\"ghost\"") && err.contains("manifest.yml:4:3"),
        "{err}"
    );
}

#[test]
fn stackato_yml_wins_for_the_app_it_names() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "manifest.yml",
        "applications:\n- name: cfapp\n  memory: 128M\n  instances: 3\n  host: web\n  domain: example.org\n  stackato:\n    ignores: [cache]\n- name: other\n  memory: 32M\n",
    );
    let apps = load(dir.path(), None).unwrap();
    assert_eq!(
        (apps[0].name.as_deref(), apps[0].mem_mb, apps[0].instances),
        (Some("cfapp"), Some(128), Some(3))
    );
    assert_eq!(apps[0].urls, Some(vec!["web.example.org".to_string()]));
    assert_eq!(apps[0].ignores, vec!["cache"]);
    write(dir.path(), "stackato.yml", "name: other\nmem: 64\n");
    let apps = load(dir.path(), None).unwrap();
    assert_eq!((apps[0].mem_mb, apps[1].mem_mb), (Some(128), Some(64)));
    // A single app: stackato.yml wins even when it renames it.
    write(
        dir.path(),
        "manifest.yml",
        "applications:\n- name: cfapp\n  memory: 128M\n  instances: 3\n",
    );
    write(dir.path(), "stackato.yml", "mem: 64\n");
    let apps = load(dir.path(), None).unwrap();
    assert_eq!((apps[0].mem_mb, apps[0].instances), (Some(64), Some(3)));
    assert_eq!(app_name_in(dir.path()).as_deref(), Some("cfapp"));
    let empty = tempfile::tempdir().unwrap();
    assert!(load(empty.path(), None).unwrap().is_empty());
}

#[test]
fn env_prompts_and_choices() {
    let text = "name: p\nenv:\n  SIZE:\n    prompt: How big?\n    choices: [small, large]\n    default: small\n  TOKEN:\n    prompt: Token\n    required: true\n";
    // Not interactive: the default, or an error naming the variable.
    let err = err_text(parse_stackato(text, &builtins()));
    assert!(
        err.contains("env `TOKEN`")
            && err.contains("--env TOKEN=VALUE")
            && err.contains("stackato.yml:7:3"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "stackato.yml", text);
    let given: BTreeSet<String> = ["TOKEN".to_string()].into();
    let b = builtins();
    let opts = LoadOptions {
        builtins: &b,
        ask: None,
        env_given: &given,
    };
    let m = &load_all(dir.path(), &opts, None).unwrap()[0];
    assert_eq!(m.env["SIZE"], "small");
    assert!(!m.env.contains_key("TOKEN"));
    // Interactive: questions are asked; a choice by number; an empty answer retries.
    let asked = RefCell::new(Vec::<String>::new());
    let answers = RefCell::new(vec!["s3cret", "", "2"]);
    let ask = |q: &str| -> Result<String> {
        asked.borrow_mut().push(q.to_string());
        Ok(answers.borrow_mut().pop().unwrap_or("").to_string())
    };
    let none = BTreeSet::new();
    let opts = LoadOptions {
        builtins: &b,
        ask: Some(&ask),
        env_given: &none,
    };
    let m = &load_all(dir.path(), &opts, None).unwrap()[0];
    assert_eq!(m.env["SIZE"], "large");
    assert_eq!(m.env["TOKEN"], "s3cret");
    let asked = asked.borrow();
    assert!(
        asked[0].contains("How big?")
            && asked[0].contains("2. large")
            && asked[0].contains("[small]"),
        "{asked:?}"
    );
    assert_eq!(asked.len(), 3, "the empty required answer is asked again");
    let err = err_text(parse_stackato(
        "env:\n  S: {choices: [a, b], default: c}\n",
        &builtins(),
    ));
    assert!(err.contains("not one of its choices"), "{err}");
}

#[test]
fn processes_hooks_cron_requirements_and_min_version() {
    let m = parse_stackato(
        "name: w\nprocesses:\n  web: ~\ncommand: python worker.py\nhooks:\n  pre-push:\n    - ./prepare.sh\n    - -false\n  pre-running: echo hi\ncron:\n  - '*/5 * * * * ./tick.sh'\n  - '@hourly ./hour.sh'\nrequirements:\n  pip: [requests]\n  ubuntu: [figlet]\n  running:\n    unix: [hello]\nmin_version:\n  client: 0.0.1\n  server: 99.1\ndepends-on: db\nframework: {type: python}\n",
        &builtins(),
    )
    .unwrap();
    assert_eq!(m.urls, Some(vec![]), "no web process, no route");
    assert_eq!(m.command.as_deref(), Some("python worker.py"));
    assert_eq!(m.pre_push, vec!["./prepare.sh", "-false"]);
    assert_eq!(m.depends_on, vec!["db"]);
    assert_eq!(m.buildpack.as_deref(), Some("python"));
    assert_eq!(
        (m.min_client.as_deref(), m.min_server.as_deref()),
        (Some("0.0.1"), Some("99.1"))
    );
    assert!(check_client_version(&m).is_ok());
    let err = check_server_version(&m, Some("0.1.0"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("99.1") && err.contains("0.1.0"), "{err}");
    assert!(check_server_version(&m, None).is_err());
    assert_eq!(
        m.staging_config["cron"][0], "*/5 * * * * ./tick.sh",
        "cron reaches the uploaded config"
    );
    let m = parse_stackato("processes:\n  web: node app.js\ncommand: x\n", &builtins()).unwrap();
    assert_eq!((m.command.as_deref(), m.urls), (Some("node app.js"), None));
    let too_new = parse_stackato("name: n\nmin_version:\n  client: 99.0\n", &builtins()).unwrap();
    let err = check_client_version(&too_new).unwrap_err().to_string();
    assert!(
        err.contains("needs strato client 99.0") && err.contains(env!("CARGO_PKG_VERSION")),
        "{err}"
    );
}

#[test]
fn bad_values_point_at_file_line_and_column() {
    let cases: &[(&str, &str)] = &[
        ("name: a\nmem: huge\n", "stackato.yml:2:1: bad `mem:`"),
        (
            "name: a\ninstances: two\n",
            "stackato.yml:2:1: `instances:` must be a whole number",
        ),
        (
            "env:\n  KEY: {required: true}\n",
            "stackato.yml:2:3: env `KEY` is required",
        ),
        (
            "name: a\ntimeout: 500\n",
            "stackato.yml:2:1: `timeout:` is 500s",
        ),
        (
            "cron:\n  - 'every minute do x'\n",
            "stackato.yml:2:6: `cron:` line",
        ),
        (
            "processes:\n  web: [a]\n",
            "stackato.yml:2:3: `web:` must be a command",
        ),
        (
            "hooks:\n  pre-staging: {a: b}\n",
            "stackato.yml:2:3: hook `pre-staging:`",
        ),
        (
            "requirements:\n  ubuntu: ['rm -rf /']\n",
            "stackato.yml:2:3: \"rm -rf /\" is not a Debian package name",
        ),
        (
            "min_version:\n  client: soon\n",
            "stackato.yml:2:3: `min_version: client:`",
        ),
        (
            "name: [unclosed\n",
            "stackato.yml:1:7: not valid YAML: unclosed bracket",
        ),
        (
            "- a\n- b\n",
            "stackato.yml:1:1: stackato.yml must be a mapping",
        ),
    ];
    for (text, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "stackato.yml", text);
        let err = format!("{:#}", load(dir.path(), None).unwrap_err());
        let short = err.replace(&format!("{}/", dir.path().display()), "");
        assert!(short.contains(expected), "{text:?}: {short}");
        assert!(short.contains("hint:"), "{text:?} has a hint: {short}");
    }
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "manifest.yml",
        "applications:\n- name: a\n  instances: 1\n- name: b\n  instances: lots\n",
    );
    let err = load(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("manifest.yml:5:3: `instances:`"), "{err}");
}

#[test]
fn unknown_keys_warn_naming_the_key() {
    let m = parse_stackato(
        "name: a\nmemroy: 64\nhooks:\n  pre-deploy: x\nprocesses:\n  worker: y\nrequirements:\n  cpan: [JSON]\n",
        &builtins(),
    )
    .unwrap();
    let all = m.warnings.join("\n");
    assert!(
        all.contains("stackato.yml:2:1: unknown key `memroy:`"),
        "{all}"
    );
    assert!(
        all.contains("stackato.yml:4:3: unknown hook `pre-deploy:`"),
        "{all}"
    );
    assert!(all.contains("`worker:` is ignored"), "{all}");
    assert!(all.contains("`cpan:` are not supported"), "{all}");
}

#[test]
fn texts_read_as_the_files_of_a_directory() {
    let manifest = "applications:\n- name: web\n  depends-on: [db]\n  memory: 128M\n- name: db\n";
    let stackato = "name: web\ninstances: 3\n";
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "manifest.yml", manifest);
    write(dir.path(), "stackato.yml", stackato);
    let given = BTreeSet::new();
    let b = builtins();
    let opts = LoadOptions {
        builtins: &b,
        ask: None,
        env_given: &given,
    };
    let from_texts = parse_texts(Some(manifest), Some(stackato), &opts, None).unwrap();
    assert_eq!(from_texts, load(dir.path(), None).unwrap());
    assert_eq!(from_texts[1].instances, Some(3));
    assert!(parse_texts(None, None, &opts, None).unwrap().is_empty());
    let err = parse_texts(None, Some("name: [unclosed\n"), &opts, None).unwrap_err();
    assert!(err.to_string().contains("stackato.yml:"), "{err}");
}

#[test]
fn drains_are_name_to_uri_with_substitution() {
    let m = parse_stackato(
        "name: web\ndrain:\n  papertrail: udp://logs.example.com:514\n  own: tcp://${name}.example.com:1\n",
        &builtins(),
    )
    .unwrap();
    assert_eq!(
        m.drains,
        vec![
            (
                "papertrail".to_string(),
                "udp://logs.example.com:514".to_string()
            ),
            ("own".to_string(), "tcp://web.example.com:1".to_string()),
        ],
        "in the file's order"
    );
    let e = err_text(parse_stackato("name: web\ndrain: [a, b]\n", &builtins()));
    assert!(e.contains("`drain:` must be a mapping"), "{e}");
}

//! The configuration's tests.

mod unit {
    use super::super::load::*;
    use super::super::*;

    const BASE: &str = r#"
[[upstreams]]
name = "p"
base_url = "http://127.0.0.1:9/v1"
[[tenants]]
name = "a"
keys = ["sk-a"]
"#;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn design_sketch_parses_with_env_overrides() {
        let text = format!("{BASE}\n[index]\nengine = \"embedded\"\ntimeout_ms = 50\n");
        let (c, w) = Config::from_toml_str(
            &text,
            &env(&[
                ("RECACHE_INDEX__TIMEOUT_MS", "75"),
                ("RECACHE_SERVER__LISTEN", "127.0.0.1:9000"),
            ]),
        )
        .unwrap();
        assert_eq!(c.index.timeout_ms, 75);
        assert_eq!(c.server.listen, "127.0.0.1:9000");
        assert_eq!(c.server.max_body_bytes, 8 * 1024 * 1024);
        assert_eq!(w.len(), 1, "plain key warns: {w:?}");
    }

    #[test]
    fn env_override_into_array_of_tables() {
        let (c, _) = Config::from_toml_str(BASE, &env(&[("RECACHE_UPSTREAMS__0__TIMEOUT_MS", "1234")])).unwrap();
        assert_eq!(c.upstreams[0].timeout_ms, 1234);
    }

    #[test]
    fn per_backend_breaker_settings_override_the_shared_ones() {
        let text =
            format!("{BASE}\n[breaker]\nopen_seconds = 20\n[breaker.artifacts]\nopen_seconds = 5\nenabled = false\n");
        let (c, _) = Config::from_toml_str(&text, &env(&[("RECACHE_BREAKER__INDEX__FAILURE_THRESHOLD", "9")])).unwrap();
        let a = c.breaker.for_backend("artifacts");
        assert_eq!((a.open_seconds, a.enabled, a.failure_threshold), (5, false, 5));
        let i = c.breaker.for_backend("index");
        assert_eq!((i.open_seconds, i.enabled, i.failure_threshold), (20, true, 9));
        let b = crate::breaker::Breaker::new("artifacts", &c.breaker);
        assert_eq!(b.state(), crate::breaker::BreakerState::Disabled);
        assert_eq!(b.status().settings.open_seconds, 5);
        let e = Config::from_toml_str(
            &format!("{BASE}\n[breaker.metadata]\nfailure_threshold = 0\n"),
            &env(&[]),
        )
        .unwrap_err();
        assert!(e.0.contains("breaker.metadata"), "{e}");
        let e = Config::from_toml_str(&format!("{BASE}\n[breaker.nope]\nopen_seconds = 1\n"), &env(&[])).unwrap_err();
        assert!(e.0.contains("nope"), "{e}");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let e = Config::from_toml_str(&format!("{BASE}\n[server]\nlisten_on = \"x\"\n"), &env(&[])).unwrap_err();
        assert!(e.0.contains("listen_on"), "{e}");
        let e = Config::from_toml_str(BASE, &env(&[("RECACHE_SERVER__NOPE", "1")])).unwrap_err();
        assert!(e.0.contains("nope"), "{e}");
    }

    #[test]
    fn bad_url_and_missing_secret_are_errors() {
        let e = Config::from_toml_str(&BASE.replace("http://127.0.0.1:9/v1", "not a url"), &env(&[])).unwrap_err();
        assert!(e.0.contains("base_url"), "{e}");
        let with_key = BASE.replace("base_url", "api_key_env = \"MY_KEY\"\nbase_url");
        let e = Config::from_toml_str(&with_key, &env(&[])).unwrap_err();
        assert!(e.0.contains("MY_KEY"), "{e}");
        assert!(Config::from_toml_str(&with_key, &env(&[("MY_KEY", "x")])).is_ok());
    }

    #[test]
    fn real_engines_need_their_settings() {
        let e = Config::from_toml_str(&format!("{BASE}[index]\nengine = \"redis\"\n"), &env(&[])).unwrap_err();
        assert!(e.0.contains("index.url"), "{e}");
        let e = Config::from_toml_str(
            &format!("{BASE}[index]\nengine = \"redis\"\nurl = \"http://x\"\n"),
            &env(&[]),
        )
        .unwrap_err();
        assert!(e.0.contains("scheme"), "{e}");
        let e = Config::from_toml_str(&format!("{BASE}[artifacts]\nengine = \"s3\"\n"), &env(&[])).unwrap_err();
        assert!(e.0.contains("bucket"), "{e}");
        // Really invalid URLs (a bad port, a bad IPv6 host, a host list where one
        // host is expected): refused, and the password is not in the message.
        for url in [
            "postgres://u:hunter2@h:99999/db",
            "postgres://u:hunter2@[::1/db",
            "redis://u:hunter2@h1:1,h2:2:3/0",
        ] {
            let section = if url.starts_with("redis") {
                "[index]\nengine = \"redis\""
            } else {
                "[metadata]\nengine = \"postgres\""
            };
            let e = Config::from_toml_str(&format!("{BASE}{section}\nurl = \"{url}\"\n"), &env(&[])).expect_err(url);
            assert!(e.0.contains("not a URL"), "{url}: {e}");
            assert!(!e.0.contains("hunter2"), "passwords never appear in errors: {e}");
        }
        let text = format!(
            "{BASE}[index]\nengine = \"redis\"\nurl = \"redis://127.0.0.1:6379/2\"\n[artifacts]\nengine = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9000\"\n[metadata]\nengine = \"postgres\"\nurl = \"postgres://recache@127.0.0.1/recache\"\n"
        );
        Config::from_toml_str(&text, &env(&[])).unwrap();
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../../../recache.example.toml");
        let e = Config::from_toml_str(text, &env(&[])).unwrap_err();
        assert!(e.0.contains("OPENAI_API_KEY"), "{e}");
        let (c, w) = Config::from_toml_str(text, &env(&[("OPENAI_API_KEY", "sk-x")])).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.upstreams[0].name, "openai");
    }

    #[test]
    fn duplicate_keys_across_tenants_rejected() {
        let text = format!(
            "{BASE}\n[[tenants]]\nname = \"b\"\nkeys = [\"sha256:{}\"]\n",
            key_hash("sk-a").unwrap()
        );
        let e = Config::from_toml_str(&text, &env(&[])).unwrap_err();
        assert!(e.0.contains("same client key"), "{e}");
    }

    #[test]
    fn connection_retries_default_to_one_and_stop_at_five() {
        let (c, _) = Config::from_toml_str(BASE, &env(&[])).unwrap();
        assert_eq!(c.upstreams[0].connection_retries, 1);
        let over = env(&[("RECACHE_UPSTREAMS__0__CONNECTION_RETRIES", "6")]);
        let e = Config::from_toml_str(BASE, &over).unwrap_err();
        assert!(e.0.contains("upstreams.p.connection_retries"), "{e}");
    }

    #[test]
    fn admin_audit_retention_is_never_shorter_than_the_answers() {
        let with = |answers: &str, admin: &str| {
            Config::from_toml_str(
                BASE,
                &env(&[
                    ("RECACHE_METADATA__AUDIT_RETENTION_DAYS", answers),
                    ("RECACHE_METADATA__ADMIN_AUDIT_RETENTION_DAYS", admin),
                ]),
            )
        };
        for (answers, admin) in [("0", "0"), ("30", "0"), ("30", "30"), ("30", "365")] {
            let (c, _) = with(answers, admin).unwrap();
            assert_eq!(c.metadata.admin_audit_retention_days.to_string(), admin);
        }
        for (answers, admin) in [("0", "30"), ("30", "7")] {
            let e = with(answers, admin).unwrap_err();
            assert!(e.0.contains("metadata.admin_audit_retention_days"), "{e}");
        }
    }
}

mod override_repro {
    use super::super::*;
    #[test]
    fn override_existing_key_in_multiline_table() {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n[index]\nengine = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nkey_prefix = \"p:\"\ntimeout_ms = 500\n\
                 [metadata]\nengine = \"postgres\"\nurl = \"postgres://u@127.0.0.1:1/x\"\ntimeout_ms = 2000\n\
                 [[upstreams]]\nname = \"s\"\nbase_url = \"http://127.0.0.1:1/v1\"\n";
        let env: HashMap<String, String> = [
            ("RECACHE_INDEX__TIMEOUT_MS".to_string(), "50".to_string()),
            ("RECACHE_METADATA__TIMEOUT_MS".to_string(), "250".to_string()),
        ]
        .into();
        let (c, _) = Config::from_toml_str(text, &env).unwrap();
        assert_eq!((c.index.timeout_ms, c.metadata.timeout_ms), (50, 250));
    }
}

//! `[index] url` for Redis, parsed without connecting: one server
//! (`redis://`, `rediss://`), a Sentinel set (`redis+sentinel://[user:pass@]h:p[,h:p…]/service[/db]`)
//! or a Cluster seed list (`redis+cluster://[user:pass@]h:p[,h:p…]`). The
//! storage layer builds its clients from what this returns, so the config
//! check and the engine read URLs the same way.

/// A parsed Redis URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisUrl {
    /// One server: the URL as given (the client parses it).
    Single(String),
    /// The master a Sentinel set names for `service`; `hosts` are `redis://h:p` URLs.
    Sentinel {
        user: Option<String>,
        pass: Option<String>,
        hosts: Vec<String>,
        service: String,
        db: i64,
    },
    /// A Redis Cluster from a seed list of `redis://h:p` URLs.
    Cluster {
        user: Option<String>,
        pass: Option<String>,
        hosts: Vec<String>,
    },
}

fn split_userinfo(s: &str) -> (Option<String>, Option<String>, &str) {
    match s.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((u, p)) => ((!u.is_empty()).then(|| u.to_string()), Some(p.to_string()), hosts),
            None => ((!userinfo.is_empty()).then(|| userinfo.to_string()), None, hosts),
        },
        None => (None, None, s),
    }
}

/// `h:p,h:p` as `redis://h:p` URLs, each checked.
fn host_list(hosts: &str) -> Result<Vec<String>, String> {
    let out: Vec<String> = hosts.split(',').map(|h| format!("redis://{}", h.trim())).collect();
    for (h, u) in hosts.split(',').zip(&out) {
        match url::Url::parse(u) {
            Ok(p) if p.host_str().is_some_and(|x| !x.is_empty()) && p.path().trim_matches('/').is_empty() => {}
            _ => return Err(format!("{h:?} is not a host:port")),
        }
    }
    Ok(out)
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let (hosts_part, path) = rest.split_once('/').unwrap_or((rest, ""));
            let (user, pass, hosts) = split_userinfo(hosts_part);
            let mut path = path.trim_end_matches('/').split('/');
            let service = path.next().filter(|s| !s.is_empty()).ok_or_else(|| {
                "redis+sentinel:// needs the service name: redis+sentinel://host:port[,host:port]/service[/db]"
                    .to_string()
            })?;
            let db: i64 = match path.next() {
                Some(d) => d.parse().map_err(|_| format!("database {d:?} is not a number"))?,
                None => 0,
            };
            return Ok(RedisUrl::Sentinel {
                user,
                pass,
                hosts: host_list(hosts)?,
                service: service.to_string(),
                db,
            });
        }
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let (user, pass, hosts) = split_userinfo(rest.trim_end_matches('/'));
            return Ok(RedisUrl::Cluster {
                user,
                pass,
                hosts: host_list(hosts)?,
            });
        }
        Ok(RedisUrl::Single(url.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topologies_parse_without_connecting() {
        assert_eq!(
            RedisUrl::parse("redis+sentinel://:pw@h1:1,h2:2/mymaster/3").unwrap(),
            RedisUrl::Sentinel {
                user: None,
                pass: Some("pw".into()),
                hosts: vec!["redis://h1:1".into(), "redis://h2:2".into()],
                service: "mymaster".into(),
                db: 3,
            }
        );
        assert_eq!(
            RedisUrl::parse("redis+cluster://u:p@a:1,b:2/").unwrap(),
            RedisUrl::Cluster {
                user: Some("u".into()),
                pass: Some("p".into()),
                hosts: vec!["redis://a:1".into(), "redis://b:2".into()],
            }
        );
        assert!(RedisUrl::parse("redis+sentinel://h1:1")
            .unwrap_err()
            .contains("service"));
        assert!(RedisUrl::parse("redis+sentinel://h1:1/m/x")
            .unwrap_err()
            .contains("number"));
        assert!(RedisUrl::parse("redis+cluster://a:1,:x").is_err());
        // The password is everything after the first colon of the userinfo; no user is none.
        assert_eq!(split_userinfo(":p@h:1"), (None, Some("p".into()), "h:1"));
        assert_eq!(split_userinfo("h:1"), (None, None, "h:1"));
    }
}

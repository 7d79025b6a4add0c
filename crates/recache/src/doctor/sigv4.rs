//! AWS Signature Version 4 for the one bucket-level call `object_store` does
//! not make: `GET /{bucket}?versioning` (path-style). Header signing only.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

/// The headers to send with a body-less request: `host`, `x-amz-date`,
/// `x-amz-content-sha256`, optional `x-amz-security-token`, and `authorization`.
/// `query` is the canonical query string (keys sorted, values encoded; `versioning=`).
pub fn sign_get(
    creds: &Credentials,
    region: &str,
    host: &str,
    path: &str,
    query: &str,
    amz_date: &str,
) -> Vec<(String, String)> {
    let date = &amz_date[..8];
    let payload = hex::encode(Sha256::digest(b""));
    let mut headers = vec![
        ("host".to_string(), host.to_string()),
        ("x-amz-content-sha256".to_string(), payload.clone()),
        ("x-amz-date".to_string(), amz_date.to_string()),
    ];
    if let Some(t) = &creds.session_token {
        headers.push(("x-amz-security-token".to_string(), t.clone()));
    }
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{}\n", v.trim())).collect();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical = format!("GET\n{path}\n{query}\n{canonical_headers}\n{signed}\n{payload}");
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("AWS4{}", creds.secret_key).as_bytes(), date);
    let k = hmac(&k, region);
    let k = hmac(&k, "s3");
    let k = hmac(&k, "aws4_request");
    let signature = hex::encode(hmac(&k, &to_sign));
    headers.push((
        "authorization".to_string(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            creds.access_key
        ),
    ));
    headers
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time in milliseconds.
pub fn amz_date(ms: i64) -> String {
    let t = crate::backup::format_time(ms); // 2026-12-03 11:22:33Z
    let digits: String = t.chars().filter(|c| c.is_ascii_digit()).take(14).collect();
    format!("{}T{}Z", &digits[..8], &digits[8..14])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published example "GET Bucket Lifecycle" (`GET /?lifecycle`).
    #[test]
    fn matches_the_published_example() {
        let c = Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let a = sign_get(
            &c,
            "us-east-1",
            "examplebucket.s3.amazonaws.com",
            "/",
            "lifecycle=",
            "20130524T000000Z",
        );
        let b = sign_get(
            &c,
            "us-east-1",
            "examplebucket.s3.amazonaws.com",
            "/",
            "versioning=",
            "20130524T000000Z",
        );
        let auth = |h: &[(String, String)]| h.iter().find(|(k, _)| k == "authorization").unwrap().1.clone();
        assert_eq!(
            auth(&a),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
        );
        assert_ne!(auth(&a), auth(&b));
        assert_eq!(amz_date(0), "19700101T000000Z");
    }
}

//! Image codec: file bytes untouched, content type sniffed from magic bytes, dimensions read
//! from the header when possible.

use super::file::{self, FileMessage};
use super::{Delivery, HeaderValue, Headers, Kind, Message, file_message_id, sha256_hex};

/// The content type for an image's magic bytes, or None when it is not an image we know.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] => Some("image/jpeg"),
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some("image/png"),
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some("image/gif"),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some("image/webp"),
        [b'B', b'M', ..] if bytes.len() >= 26 => Some("image/bmp"),
        [b'I', b'I', 0x2A, 0x00, ..] | [b'M', b'M', 0x00, 0x2A, ..] => Some("image/tiff"),
        _ => None,
    }
}

/// The file is not an image mqdemo recognises.
#[derive(Debug, PartialEq, Eq)]
pub struct NotAnImage;

/// A message for one image file; `source` is its path relative to the input directory,
/// `/`-separated.
pub fn encode(source: &str, bytes: Vec<u8>) -> Result<Message, NotAnImage> {
    let content_type = sniff(&bytes).ok_or(NotAnImage)?;
    let mut headers = Headers::new();
    headers.insert("source".into(), HeaderValue::Str(source.to_string()));
    headers.insert("size".into(), HeaderValue::Int(bytes.len() as i64));
    let digest = sha256_hex(&bytes);
    let message_id = file_message_id(Kind::Image, source, &digest);
    headers.insert("sha256".into(), HeaderValue::Str(digest));
    if let Ok(dim) = imagesize::blob_size(&bytes) {
        headers.insert("width".into(), HeaderValue::Int(dim.width as i64));
        headers.insert("height".into(), HeaderValue::Int(dim.height as i64));
    }
    Ok(Message {
        kind: Kind::Image,
        content_type: content_type.to_string(),
        message_id,
        headers,
        body: bytes,
        label: source.to_string(),
        route: super::Route::default(),
        original: super::Original::default(),
        ticket: 0,
    })
}

/// A received image message: always a whole file (line headers mean nothing for images),
/// named from its `source` header when safe.
pub fn decode(d: &Delivery) -> FileMessage {
    file::decode(d, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::assert_round_trip;

    /// A 3x2 PNG header (IHDR only is enough for sniffing and dimensions).
    fn png_3x2() -> Vec<u8> {
        let mut v = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
        v.extend_from_slice(&[0, 0, 0, 13]);
        v.extend_from_slice(b"IHDR");
        v.extend_from_slice(&3u32.to_be_bytes());
        v.extend_from_slice(&2u32.to_be_bytes());
        v.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        v
    }

    #[test]
    fn sniffs_known_magic_bytes() {
        assert_eq!(sniff(&png_3x2()), Some("image/png"));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff(b"GIF89a...."), Some("image/gif"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"II*\0rest"), Some("image/tiff"));
        assert_eq!(sniff(b"MM\0*rest"), Some("image/tiff"));
        assert_eq!(sniff(b"hello world"), None);
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(b"BM"), None);
    }

    #[test]
    fn image_round_trips_untouched_with_headers() {
        let bytes = png_3x2();
        let msg = encode("shapes/a.png", bytes.clone()).expect("png");
        assert_eq!(msg.headers.get("width"), Some(&HeaderValue::Int(3)));
        assert_eq!(msg.headers.get("height"), Some(&HeaderValue::Int(2)));
        assert_eq!(msg.headers.get("size"), Some(&HeaderValue::Int(bytes.len() as i64)));
        assert_eq!(msg.headers.get("sha256"), Some(&HeaderValue::Str(sha256_hex(&bytes))));
        assert_round_trip(&msg, "image/png", |d| d.body.clone(), bytes);
    }

    #[test]
    fn non_image_is_refused() {
        assert_eq!(encode("x.txt", b"plain text".to_vec()), Err(NotAnImage));
    }
}

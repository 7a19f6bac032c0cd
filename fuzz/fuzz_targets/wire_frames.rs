//! Agent→balancer `queue` frames and balancer→agent `report` frames (protocol::Message).
//! Asserts: any text that decodes re-encodes to text that decodes to an equal message, and
//! encoding is a fixed point (encode(decode(encode(m))) == encode(m)).
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(msg) = Message::decode(text) else {
        return;
    };
    let once = msg.encode();
    let again = Message::decode(&once)
        .unwrap_or_else(|e| panic!("re-encoded frame does not decode: {e}: {once}"));
    assert_eq!(again, msg, "round trip changed the message: {once}");
    assert_eq!(again.encode(), once, "encoding is not a fixed point");
    // The tag is always the first field and one of the two known kinds.
    assert!(
        once.starts_with(r#"{"type":"queue""#) || once.starts_with(r#"{"type":"report""#),
        "{once}"
    );
});

//! The codec of Veil's gRPC **servers**: prost's, except that a request that does not decode
//! is refused with `INVALID_ARGUMENT` (PROTO-DEC-01).
//!
//! `tonic_prost::ProstCodec` maps every `prost::DecodeError` (invalid UTF-8 in a `string`
//! field, a wrong wire type, nesting over prost's recursion limit, a truncated field) to
//! `INTERNAL`, which `specs/key-service.md` §6 reserves for "the database failed; retry later".
//! A request that does not decode is the caller's fault and will not decode on a retry either.
//!
//! Only the generated servers use this codec; the generated clients keep prost's, so an
//! undecodable *reply* stays `INTERNAL` (a broken server, gRPC's convention). Encoding is
//! prost's, unchanged.
//!
//! ```
//! use tonic::codec::{Codec as _, Decoder as _};
//! use veil_proto::codec::ProstCodec;
//! use veil_proto::keys::v1::GetGroupInfoRequest;
//!
//! let mut codec = ProstCodec::<GetGroupInfoRequest, GetGroupInfoRequest>::default();
//! let _decoder = codec.decoder();
//! ```

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// The prefix of the message of every refused request, so logs and clients can tell a
/// malformed request from a refused one.
pub const MALFORMED_PREFIX: &str = "malformed request: ";

/// A [`Codec`] for `application/grpc+proto` that encodes like `tonic_prost::ProstCodec` and
/// maps decode failures to [`tonic::Code::InvalidArgument`].
#[derive(Debug, Clone)]
pub struct ProstCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for ProstCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for ProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder { _pd: PhantomData }
    }
}

/// A [`Decoder`] of `U` whose failures are `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct ProstDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for ProstDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // PROTO-DEC-01
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("{MALFORMED_PREFIX}{e}")))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use crate::keys::v1::GetGroupInfoRequest;

    /// The three shapes of issue 22 fail to decode in prost; the server codec turns each into
    /// `INVALID_ARGUMENT` (checked end to end in the server's and the SFU's tests).
    #[test]
    fn prost_refuses_the_malformed_shapes() {
        // Field 1 (`room`, a string) with the bytes FF FE: not UTF-8.
        let bad_utf8 = [0x0a, 0x02, 0xff, 0xfe];
        // Field 1 as a varint: a string field needs wire type 2.
        let wrong_wire_type = [0x08, 0x01];
        // An unknown field 15 made of 200 nested, well-closed groups: over prost's recursion
        // limit (100), though every byte is in place.
        let mut deep = vec![0x7b; 200]; // field 15, start group
        deep.extend([0x7c; 200]); // field 15, end group
        for (name, bytes, why) in [
            ("invalid UTF-8", &bad_utf8[..], "UTF-8"),
            ("wrong wire type", &wrong_wire_type[..], "wire type"),
            ("deep nesting", &deep[..], "recursion limit"),
        ] {
            let e = GetGroupInfoRequest::decode(bytes).expect_err(name);
            assert!(e.to_string().contains(why), "{name}: {e}");
        }
        // 50 levels decode: the limit is prost's, not ours.
        let mut shallow = vec![0x7b; 50];
        shallow.extend([0x7c; 50]);
        assert!(GetGroupInfoRequest::decode(&shallow[..]).is_ok());
    }
}

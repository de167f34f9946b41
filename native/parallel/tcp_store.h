// The rendezvous store of a process group: a key-value store served by rank 0 at MASTER_ADDR:MASTER_PORT over
// TCP, as torchrun's c10d TCPStore is. gloo's full-mesh rendezvous publishes each pair's address in it. Each rank
// keeps its connection open for the whole run and says its rank first, so the server knows a rank is gone when
// its connection closes: after a failed collective the survivors ask which (gone()), to name it.
// Requests are [op u8][key length u32][key][value length u32][value]; a get never blocks the server: the client
// polls until the key is there or the timeout passes.
#pragma once

#include <gloo/rendezvous/store.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace memgpt {

namespace store_io {

inline bool sendAll(int fd, const void* data, size_t n) {
  auto* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k <= 0) return false;
    p += k;
    n -= size_t(k);
  }
  return true;
}

inline bool recvAll(int fd, void* data, size_t n) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t k = ::recv(fd, p, n, 0);
    if (k <= 0) return false;
    p += k;
    n -= size_t(k);
  }
  return true;
}

inline bool sendBlob(int fd, const std::string& s) {
  uint32_t n = uint32_t(s.size());
  return sendAll(fd, &n, 4) && sendAll(fd, s.data(), n);
}

inline bool recvBlob(int fd, std::string& s) {
  uint32_t n = 0;
  if (!recvAll(fd, &n, 4) || n > (64u << 20)) return false;
  s.resize(n);
  return recvAll(fd, s.data(), n);
}

}  // namespace store_io

class TcpStore : public gloo::rendezvous::Store {
 public:
  TcpStore(const std::string& host, int port, int rank, bool serve, std::chrono::milliseconds timeout) : timeout_(timeout) {
    if (serve) startServer(port);
    connectClient(host, port);
    std::string reply;
    request('H', std::to_string(rank), std::string(), reply);
  }

  // The ranks whose connection to the store has closed (died, or ended), as "1,3"; throws when the store itself
  // cannot be reached (rank 0 is gone).
  std::string gone() {
    std::string reply;
    request('L', std::string(), std::string(), reply);
    return reply;
  }

  ~TcpStore() override {
    if (client_ >= 0) ::close(client_);
    if (server_) {
      server_->stop = true;
      ::shutdown(server_->listenFd, SHUT_RDWR);
      {
        std::lock_guard<std::mutex> lock(server_->mutex);
        for (int fd : server_->connections) ::shutdown(fd, SHUT_RDWR);
      }
      if (acceptThread_.joinable()) acceptThread_.join();
    }
  }

  void set(const std::string& key, const std::vector<char>& data) override {
    std::string reply;
    request('S', key, std::string(data.begin(), data.end()), reply);
  }

  std::vector<char> get(const std::string& key) override {
    std::string value;
    if (!poll({key}, timeout_, &value)) throw std::runtime_error(missing(key));
    return std::vector<char>(value.begin(), value.end());
  }

  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }

  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    if (!poll(keys, timeout, nullptr)) throw std::runtime_error(missing(keys.empty() ? std::string() : keys[0]));
  }

 private:
  struct Server {
    int listenFd = -1;
    std::atomic<bool> stop{false};
    std::mutex mutex;
    std::map<std::string, std::string> values;
    std::set<int> connections;
    std::set<int> goneRanks;
  };

  std::string missing(const std::string& key) const {
    return "the rendezvous key " + key + " did not appear within " + std::to_string(timeout_.count() / 1000.0) +
           " s (a rank did not start, or died before joining)";
  }

  // Polls the store until every key is there (then value, if given, is the first key's) or the time is up.
  bool poll(const std::vector<std::string>& keys, std::chrono::milliseconds timeout, std::string* value) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      bool all = true;
      for (size_t i = 0; i < keys.size() && all; i++) {
        std::string reply;
        request('G', keys[i], std::string(), reply);
        if (reply.empty() || reply[0] != 1) all = false;
        else if (i == 0 && value) *value = reply.substr(1);
      }
      if (all) return true;
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  void request(char op, const std::string& key, const std::string& value, std::string& reply) {
    std::lock_guard<std::mutex> lock(clientMutex_);
    using namespace store_io;
    if (!sendAll(client_, &op, 1) || !sendBlob(client_, key) || !sendBlob(client_, value) || !recvBlob(client_, reply)) {
      throw std::runtime_error("the rendezvous store (served by rank 0) closed the connection");
    }
  }

  void startServer(int port) {
    server_ = std::make_shared<Server>();
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(uint16_t(port));
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 128) != 0) {
      std::string why = std::strerror(errno);
      ::close(fd);
      throw std::runtime_error("rank 0 cannot serve the rendezvous store on port " + std::to_string(port) + ": " + why);
    }
    server_->listenFd = fd;
    auto server = server_;
    acceptThread_ = std::thread([server] {
      std::vector<std::thread> handlers;
      while (!server->stop) {
        pollfd p{server->listenFd, POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0) continue;
        int conn = ::accept(server->listenFd, nullptr, nullptr);
        if (conn < 0) continue;
        {
          std::lock_guard<std::mutex> lock(server->mutex);
          server->connections.insert(conn);
        }
        handlers.emplace_back([server, conn] { serve(*server, conn); });
      }
      for (auto& t : handlers) t.join();
      ::close(server->listenFd);
    });
  }

  static void serve(Server& server, int conn) {
    using namespace store_io;
    int rank = -1;
    for (;;) {
      char op = 0;
      std::string key, value, reply;
      if (!recvAll(conn, &op, 1) || !recvBlob(conn, key) || !recvBlob(conn, value)) break;
      {
        std::lock_guard<std::mutex> lock(server.mutex);
        if (op == 'H') {
          rank = std::atoi(key.c_str());
          reply = "\1";
        } else if (op == 'L') {
          for (int r : server.goneRanks) reply += (reply.empty() ? "" : ",") + std::to_string(r);
        } else if (op == 'S') {
          server.values[key] = value;
          reply = "\1";
        } else {
          auto it = server.values.find(key);
          reply = it == server.values.end() ? std::string("\0", 1) : "\1" + it->second;
        }
      }
      if (!sendBlob(conn, reply)) break;
    }
    std::lock_guard<std::mutex> lock(server.mutex);
    if (rank >= 0 && !server.stop) server.goneRanks.insert(rank);
    server.connections.erase(conn);
    ::close(conn);
  }

  void connectClient(const std::string& host, int port) {
    auto deadline = std::chrono::steady_clock::now() + timeout_;
    std::string why = "no answer";
    for (;;) {
      addrinfo hints{}, *found = nullptr;
      hints.ai_family = AF_UNSPEC;
      hints.ai_socktype = SOCK_STREAM;
      int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
      if (rc == 0) {
        for (addrinfo* a = found; a; a = a->ai_next) {
          int fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
          if (fd < 0) continue;
          if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            client_ = fd;
            break;
          }
          why = std::strerror(errno);
          ::close(fd);
        }
        ::freeaddrinfo(found);
      } else {
        why = ::gai_strerror(rc);
      }
      if (client_ >= 0) return;
      if (std::chrono::steady_clock::now() > deadline) {
        throw std::runtime_error("no rendezvous store at " + host + ":" + std::to_string(port) + " within " +
                                 std::to_string(timeout_.count() / 1000.0) + " s (" + why + "; is rank 0 running?)");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  std::chrono::milliseconds timeout_;
  std::shared_ptr<Server> server_;
  std::thread acceptThread_;
  int client_ = -1;
  std::mutex clientMutex_;
};

}  // namespace memgpt

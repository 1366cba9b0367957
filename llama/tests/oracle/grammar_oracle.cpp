// Differential-testing harness: llama.cpp's own grammar code (included
// verbatim from the pinned sdist) driven over stdin; `make test-llama` builds
// it and runs llama::grammar's differential test against it. Not part of the crate.
#include "llama-grammar.cpp"  // from -I <llama.cpp>/src
#include <cstdarg>
#include <iostream>
#include <sstream>

void llama_log_internal(ggml_log_level, const char *, ...) {}
void ggml_abort(const char * file, int line, const char * fmt, ...) {
    fprintf(stderr, "ggml_abort %s:%d\n", file, line);
    fflush(stdout);
    _Exit(3);
}
int32_t llama_vocab::tokenize(const char *, int32_t, llama_token *, int32_t, bool, bool) const { return 0; }
const std::string & llama_vocab::token_to_piece(llama_token) const { static std::string s; return s; }
bool llama_vocab::is_eog(llama_token) const { return false; }

static std::string unhex(const std::string & h) {
    std::string out;
    for (size_t i = 0; i + 1 < h.size(); i += 2) out.push_back((char) std::stoi(h.substr(i, 2), nullptr, 16));
    return out;
}

static std::string read_hex_line() {
    std::string line;
    std::getline(std::cin, line);
    return unhex(line);
}

int main() {
    // protocol: line 1 = hex grammar, line 2 = hex root; then commands
    std::string src = read_hex_line();
    std::string root = read_hex_line();
    llama_grammar_parser parser;
    bool parsed = parser.parse(src.c_str());
    // print the parse result exactly (symbols + rules) when it parsed
    if (parsed) {
        std::cout << "PARSED " << parser.symbol_ids.size() << " " << parser.rules.size() << "\n";
        for (auto & kv : parser.symbol_ids) std::cout << kv.first << " " << kv.second << "\n";
        for (auto & rule : parser.rules) {
            for (auto & e : rule) std::cout << e.type << ":" << e.value << " ";
            std::cout << "\n";
        }
    } else {
        std::cout << "PARSE_FAIL\n";
    }
    llama_grammar * g = llama_grammar_init_impl(nullptr, src.c_str(), root.c_str(), false, nullptr, 0, nullptr, 0);
    if (!g) { std::cout << "INIT_FAIL" << std::endl; return 0; }
    std::cout << "INIT_OK" << std::endl;
    const auto stacks0 = g->stacks;
    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        std::string cmd; in >> cmd;
        if (cmd == "R") { g->stacks = stacks0; g->partial_utf8 = {}; std::cout << "ok" << std::endl; continue; }
        if (cmd == "M") {
            uint32_t id; in >> id;
            std::vector<std::string> pieces; std::string h;
            while (in >> h) pieces.push_back(h == "-" ? std::string() : unhex(h));
            std::vector<std::pair<std::vector<uint32_t>, llama_partial_utf8>> decoded;
            decoded.reserve(pieces.size());
            std::vector<char> allowed(pieces.size(), 1);
            llama_grammar_candidates cands;
            for (size_t i = 0; i < pieces.size(); i++) {
                if (pieces[i].empty() || pieces[i][0] == 0) { allowed[i] = 0; continue; }
                decoded.push_back(decode_utf8(pieces[i], g->partial_utf8));
                cands.push_back({ i, decoded.back().first.data(), decoded.back().second, (llama_token) id });
            }
            if (g->stacks.empty()) { for (auto & c : cands) allowed[c.index] = 0; }
            else for (auto & r : llama_grammar_reject_candidates(g->rules, g->stacks, cands)) allowed[r.index] = 0;
            for (char a : allowed) std::cout << (a ? '1' : '0');
            std::cout << std::endl;
            continue;
        }
        if (cmd == "A") {
            uint32_t id; std::string h; in >> id >> h;
            auto saved = g->stacks; auto saved_p = g->partial_utf8;
            try {
                llama_grammar_accept_token(*g, (llama_token) id, unhex(h));
                bool can_end = false;
                for (auto & s : g->stacks) if (s.empty()) can_end = true;
                // canonical stack dump: element indexes relative to rule starts
                std::vector<std::string> dump;
                for (auto & s : g->stacks) {
                    std::string d;
                    for (auto * p : s) {
                        for (size_t r = 0; r < g->rules.size(); r++) {
                            const auto & rule = g->rules[r];
                            if (p >= rule.data() && p < rule.data() + rule.size()) { d += std::to_string(r) + "." + std::to_string(p - rule.data()) + ","; break; }
                        }
                    }
                    dump.push_back(d);
                }
                std::sort(dump.begin(), dump.end());
                dump.erase(std::unique(dump.begin(), dump.end()), dump.end());
                std::cout << "ok " << can_end << " " << g->partial_utf8.value << " " << g->partial_utf8.n_remain;
                for (auto & d : dump) std::cout << " [" << d << "]";
                std::cout << std::endl;
            } catch (const std::exception &) {
                g->stacks = saved; g->partial_utf8 = saved_p;
                std::cout << "fail" << std::endl;
            }
            continue;
        }
    }
    return 0;
}

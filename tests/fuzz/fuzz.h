/*
 * The entry point every fuzz target in tests/fuzz/ defines. libFuzzer calls
 * it with generated inputs; replay.c calls it with the files of the
 * target's corpus, so that `make check` runs the corpus in every build.
 */

#ifndef KOU_FUZZ_H
#define KOU_FUZZ_H

#include <stddef.h>
#include <stdint.h>

/*
 * Run one input. Returns 0; a finding (a crash, a sanitizer report, or a
 * broken invariant, which the target turns into abort()) never returns.
 * data is only read, and need not stay valid after the call.
 */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif /* KOU_FUZZ_H */

/*
 * A stand-in for libedgetpu at its lowest boundary: the TFLite external-delegate plugin
 * entry points that `load_delegate('libedgetpu.so.1', {...})` calls through ctypes.
 *
 * Built by the tests with the system C compiler, in two variants:
 *   cc -shared -fPIC -o libfake_edgetpu.so fake_edgetpu.c              loads; claims no nodes
 *   cc -shared -fPIC -DFAKE_REFUSE -o libfake_refuse.so fake_edgetpu.c  refuses to load, as the
 *       real library does with no TPU attached ("Failed to load delegate from ...")
 *
 * The loading variant returns a TfLiteDelegate whose Prepare() claims no nodes: a model
 * without an edgetpu-custom-op then runs on the CPU kernels inside edged's worker process,
 * exercising exactly the path libedgetpu takes (plugin create -> interpreter with
 * experimental_delegates -> ModifyGraphWithDelegate -> invoke -> plugin destroy).
 * An Edge TPU-compiled model fails to prepare with it, as with a mismatched libedgetpu.
 *
 * With EDGED_FAKE_DELEGATE_LOG set, every create/destroy appends a line to that file
 * (pid and the options received), so tests can check what edged passed.
 *
 * With EDGED_FAKE_FAULT_FILE set, each create reads that file: "abort MS" or "hang MS" makes
 * the process abort (SIGABRT, as libedgetpu's LOG(FATAL)) or stop (SIGSTOP: a wedged USB
 * transfer) MS milliseconds after the delegate was created, from a thread, i.e. right after a
 * probe has loaded the model and run its test inference: a TPU that flaps. "load-abort" or
 * "load-hang" (an MS after it is ignored) aborts or stops the process during the load itself,
 * inside tflite_plugin_create_delegate before it returns (after its "create" log line): a
 * LOG(FATAL) while opening the device, a firmware upload that wedges. A missing or empty file,
 * or any other content: a healthy TPU (the file is read again by the next worker).
 *
 * Both variants export edgetpu_version() (libedgetpu's edgetpu_c.h) with a build label in the
 * real library's format, so `edged doctor` can read a version from the stand-in.
 */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The leading fields of TfLiteDelegate (tensorflow/lite/core/c/common.h), which have been
 * stable across TF Lite 2.x; the trailing padding covers fields newer versions append. */
typedef struct FakeDelegate {
  void *data_;
  int (*Prepare)(void *context, struct FakeDelegate *delegate);
  void *CopyFromBufferHandle;
  void *CopyToBufferHandle;
  void *FreeBufferHandle;
  int64_t flags;
  void *opaque_delegate_builder;
  char reserved[256];
} FakeDelegate;

#ifndef FAKE_REFUSE
static int prepare(void *context, FakeDelegate *delegate) {
  (void)context;
  (void)delegate;
  return 0; /* kTfLiteOk, having claimed no nodes */
}
#endif

static void log_line(const char *what, char **keys, char **values, size_t n) {
  const char *path = getenv("EDGED_FAKE_DELEGATE_LOG");
  if (!path) return;
  FILE *f = fopen(path, "a");
  if (!f) return;
  fprintf(f, "%s pid=%ld", what, (long)getpid());
  for (size_t i = 0; i < n; i++) fprintf(f, " %s=%s", keys[i], values[i]);
  fprintf(f, "\n");
  fclose(f);
}

#ifndef FAKE_REFUSE
static int fault_signal;
static long fault_ms;

static void *fault_later(void *arg) {
  (void)arg;
  usleep((useconds_t)(fault_ms * 1000));
  if (fault_signal == SIGABRT) abort();
  raise(SIGSTOP);
  return NULL;
}

/* Reads EDGED_FAKE_FAULT_FILE: a fault during the load happens here, one after it is armed. */
static void arm_fault(void) {
  const char *path = getenv("EDGED_FAKE_FAULT_FILE");
  if (!path) return;
  FILE *f = fopen(path, "r");
  if (!f) return;
  char kind[16] = {0};
  long ms = 0;
  int n = fscanf(f, "%15s %ld", kind, &ms);
  fclose(f);
  if (n >= 1 && strcmp(kind, "load-abort") == 0) abort();
  if (n >= 1 && strcmp(kind, "load-hang") == 0) {
    raise(SIGSTOP);
    return;
  }
  if (n != 2) return;
  if (strcmp(kind, "abort") == 0)
    fault_signal = SIGABRT;
  else if (strcmp(kind, "hang") == 0)
    fault_signal = SIGSTOP;
  else
    return;
  fault_ms = ms;
  pthread_t t;
  if (pthread_create(&t, NULL, fault_later, NULL) == 0) pthread_detach(t);
}
#endif

const char *edgetpu_version(void) {
  return "BuildLabel(COMPILER=fake-edgetpu,DATE=redacted,TIME=redacted,CL_NUMBER=0), RuntimeVersion(14)";
}

void *tflite_plugin_create_delegate(char **keys, char **values, size_t n, void (*report_error)(const char *)) {
#ifdef FAKE_REFUSE
  log_line("refuse", keys, values, n);
  if (report_error) report_error("fake edgetpu: no Edge TPU device found");
  return NULL;
#else
  (void)report_error;
  FakeDelegate *d = calloc(1, sizeof *d);
  if (!d) return NULL;
  d->Prepare = prepare;
  log_line("create", keys, values, n);
  arm_fault();
  return d;
#endif
}

void tflite_plugin_destroy_delegate(void *delegate) {
  log_line("destroy", NULL, NULL, 0);
  free(delegate);
}

/* The tile transforms of Winograd F(4x4, 3x3) (model/ops/winograd.py), in plain C for the CPU.
 *
 * Compiled on first use by model/ops/winograd.py with the machine's C compiler (-O3, plus -mavx2 -mfma
 * where the CPU has them) and loaded with ctypes: no PyTorch headers, a second's build. Each call
 * splits its tiles over `threads`
 * POSIX threads. Tensors are dense row-major arrays:
 *   images   (N, H, W, C)  channels-last activations, or their gradients
 *   tiles    (36, P, C)    one matrix (P, C) per position xi = 6i + j of the 6x6 transformed tile,
 *                          P = N * th * tw tiles, tile p = (n * th + ti) * tw + tj
 * Transforms are separable, L d R^T with small integer (or half-integer) matrices, applied
 * along the tile's rows then its columns.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW 6
#define MAX_THREADS 256

/* F(4, 3), points 0, 1, -1, 2, -2, infinity (Lavin & Gray 2016). */
static const double INPUT_T[6][6] = {
    {4, 0, -5, 0, 1, 0}, {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
    {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
static const double OUTPUT_T[4][6] = {
    {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
/* The output transform followed by a 2x2 average: rows 2u and 2u+1 of OUTPUT_T, halved. */
static const double POOLED_OUTPUT_T[2][6] = {
    {0.5, 1, 0, 1.5, -0.5, 0}, {0, 1, 0, 6, -2, 0.5}};

typedef struct {
    int kind;           /* 0 input transform, 1 output transform, 2 output-gradient transform */
    int is_double;
    const void *source;
    void *target;
    const void *bias;   /* output transform only, or NULL */
    int64_t batch, height, width, channels, tiles_high, tiles_wide;
    int size;           /* output tile side: 4, or 2 when pooled */
    const double (*output_t)[6];
    int64_t first_row, last_row;  /* tile rows (n, ti) of this thread, as n * th + ti */
    void *buffer;
} job_t;

/* Work goes by tile rows: the 6 (or `size`) image rows under tile row ti, transformed along the
 * image height as whole rows, then along the width for all tw tiles of the row at once, so that
 * each inner loop runs over tw * C (or C with a stride between tiles) contiguous numbers. */
#define DEFINE_KERNELS(T, SUFFIX)                                                                     \
/* out[o * out_stride + c] = sum_k coefficient[k] * rows[k][o * row_stride + c], o < outer, c < inner;  \
 * NULL rows are zeros. */                                                                            \
static inline void combine_##SUFFIX(T *out, int64_t out_stride, const T *const *rows, int64_t row_stride,\
                                    const double *coefficients, int count, int64_t outer, int64_t inner) { \
    int started = 0;                                                                                  \
    for (int k = 0; k < count; k++) {                                                                 \
        const T a = (T)coefficients[k];                                                               \
        if (a == 0 || rows[k] == NULL) continue;                                                      \
        for (int64_t o = 0; o < outer; o++) {                                                         \
            const T *row = rows[k] + o * row_stride;                                                  \
            T *target = out + o * out_stride;                                                         \
            if (!started)                                                                             \
                for (int64_t c = 0; c < inner; c++) target[c] = a * row[c];                           \
            else                                                                                      \
                for (int64_t c = 0; c < inner; c++) target[c] += a * row[c];                          \
        }                                                                                             \
        started = 1;                                                                                  \
    }                                                                                                 \
    if (!started)                                                                                     \
        for (int64_t o = 0; o < outer; o++) memset(out + o * out_stride, 0, (size_t)inner * sizeof(T));  \
}                                                                                                     \
                                                                                                      \
/* V = B^T d B of each tile: the 6x6 window at (4 ti - 1, 4 tj - 1), zeros outside the image. */      \
static void input_tiles_##SUFFIX(const job_t *job) {                                                  \
    const T *images = (const T *)job->source;                                                         \
    T *tiles = (T *)job->target, *buffer = (T *)job->buffer;                                          \
    const int64_t C = job->channels, H = job->height, W = job->width, tw = job->tiles_wide;           \
    const int64_t P = job->batch * job->tiles_high * tw, padded = 4 * tw + 2; /* columns, 1 on the left */\
    const T *rows[6];                                                                                 \
    for (int64_t row = job->first_row; row < job->last_row; row++) {                                  \
        const int64_t n = row / job->tiles_high, ti = row % job->tiles_high;                          \
        for (int r = 0; r < 6; r++) {                                                                 \
            const int64_t h = 4 * ti + r - 1;                                                         \
            rows[r] = (h < 0 || h >= H) ? NULL : images + (n * H + h) * W * C;                        \
        }                                                                                             \
        for (int i = 0; i < 6; i++) { /* buffer i: (padded, C), column 0 and columns > W are zeros */ \
            T *line = buffer + i * padded * C;                                                        \
            memset(line, 0, (size_t)C * sizeof(T));                                                   \
            combine_##SUFFIX(line + C, 0, rows, 0, INPUT_T[i], 6, 1, W * C);                          \
            memset(line + (W + 1) * C, 0, (size_t)(padded - W - 1) * C * sizeof(T));                  \
        }                                                                                             \
        for (int i = 0; i < 6; i++) {                                                                 \
            const T *columns[6];                                                                      \
            for (int s = 0; s < 6; s++) columns[s] = buffer + (i * padded + s) * C;                   \
            for (int j = 0; j < 6; j++)                                                               \
                combine_##SUFFIX(tiles + ((i * 6 + j) * P + row * tw) * C, C, columns, 4 * C, INPUT_T[j], \
                                 6, tw, C);                                                           \
        }                                                                                             \
    }                                                                                                 \
}                                                                                                     \
                                                                                                      \
/* y = A^T M A (+ bias) of each tile, written where it falls inside the (N, H, W, K) output. */      \
static void output_from_tiles_##SUFFIX(const job_t *job) {                                            \
    const T *tiles = (const T *)job->source, *bias = (const T *)job->bias;                            \
    T *images = (T *)job->target, *buffer = (T *)job->buffer; /* buffer (u, j): (tw, K) */            \
    const int64_t K = job->channels, H = job->height, W = job->width, tw = job->tiles_wide;           \
    const int64_t P = job->batch * job->tiles_high * tw;                                              \
    const int size = job->size;                                                                       \
    const T *sources[6];                                                                              \
    for (int64_t row = job->first_row; row < job->last_row; row++) {                                  \
        const int64_t n = row / job->tiles_high, ti = row % job->tiles_high;                          \
        for (int u = 0; u < size; u++) {                                                              \
            if (size * ti + u >= H) continue;                                                         \
            for (int j = 0; j < 6; j++) {                                                             \
                for (int i = 0; i < 6; i++) sources[i] = tiles + ((i * 6 + j) * P + row * tw) * K;    \
                combine_##SUFFIX(buffer + (u * 6 + j) * tw * K, 0, sources, 0, job->output_t[u], 6, 1, tw * K); \
            }                                                                                         \
        }                                                                                             \
        for (int u = 0; u < size; u++) {                                                              \
            const int64_t h = size * ti + u;                                                          \
            if (h >= H) continue;                                                                     \
            for (int j = 0; j < 6; j++) sources[j] = buffer + (u * 6 + j) * tw * K;                   \
            for (int v = 0; v < size; v++) {                                                          \
                const int64_t inside = (W - v + size - 1) / size; /* tiles whose column v is < W */   \
                const int64_t count = inside < tw ? inside : tw;                                      \
                T *out = images + ((n * H + h) * W + v) * K;                                          \
                if (count <= 0) continue;                                                             \
                combine_##SUFFIX(out, size * K, sources, K, job->output_t[v], 6, count, K);           \
                if (bias != NULL)                                                                     \
                    for (int64_t o = 0; o < count; o++)                                               \
                        for (int64_t c = 0; c < K; c++) out[o * size * K + c] += bias[c];             \
            }                                                                                         \
        }                                                                                             \
    }                                                                                                 \
}                                                                                                     \
                                                                                                      \
/* dM = A dy A^T, the adjoint of the output transform: zeros where the tile leaves the output. */    \
static void output_gradient_tiles_##SUFFIX(const job_t *job) {                                        \
    const T *images = (const T *)job->source;                                                         \
    T *tiles = (T *)job->target, *buffer = (T *)job->buffer; /* buffer (i, v): (tw, K) */             \
    const int64_t K = job->channels, H = job->height, W = job->width, tw = job->tiles_wide;           \
    const int64_t P = job->batch * job->tiles_high * tw;                                              \
    const int size = job->size;                                                                       \
    double coefficients[6][6]; /* coefficients[i][u] = A^T[u][i] */                                   \
    const T *sources[6];                                                                              \
    for (int i = 0; i < 6; i++)                                                                       \
        for (int u = 0; u < size; u++) coefficients[i][u] = job->output_t[u][i];                      \
    for (int64_t row = job->first_row; row < job->last_row; row++) {                                  \
        const int64_t n = row / job->tiles_high, ti = row % job->tiles_high;                          \
        for (int v = 0; v < size; v++) {                                                              \
            const int64_t inside = (W - v + size - 1) / size;                                         \
            const int64_t count = inside < 0 ? 0 : inside < tw ? inside : tw;                         \
            for (int u = 0; u < size; u++) {                                                          \
                const int64_t h = size * ti + u;                                                      \
                sources[u] = h >= H ? NULL : images + ((n * H + h) * W + v) * K;                      \
            }                                                                                         \
            for (int i = 0; i < 6; i++) {                                                             \
                T *line = buffer + (i * size + v) * tw * K;                                           \
                combine_##SUFFIX(line, K, sources, size * K, coefficients[i], size, count, K);        \
                if (count < tw) memset(line + count * K, 0, (size_t)(tw - count) * K * sizeof(T));    \
            }                                                                                         \
        }                                                                                             \
        for (int i = 0; i < 6; i++) {                                                                 \
            for (int v = 0; v < size; v++) sources[v] = buffer + (i * size + v) * tw * K;            \
            for (int j = 0; j < 6; j++)                                                               \
                combine_##SUFFIX(tiles + ((i * 6 + j) * P + row * tw) * K, 0, sources, 0, coefficients[j], \
                                 size, 1, tw * K);                                                    \
        }                                                                                             \
    }                                                                                                 \
}

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)

static void *run_job(void *argument) {
    const job_t *job = (const job_t *)argument;
    if (job->is_double) {
        if (job->kind == 0) input_tiles_f64(job);
        else if (job->kind == 1) output_from_tiles_f64(job);
        else output_gradient_tiles_f64(job);
    } else {
        if (job->kind == 0) input_tiles_f32(job);
        else if (job->kind == 1) output_from_tiles_f32(job);
        else output_gradient_tiles_f32(job);
    }
    return NULL;
}

/* Splits the tile rows over `threads` threads (the calling one included); returns 0, or -1 when a buffer
 * could not be allocated or a thread not started. */
static int run_parallel(job_t job, int threads) {
    const int64_t rows = job.batch * job.tiles_high;
    const size_t element = job.is_double ? sizeof(double) : sizeof(float);
    /* the largest buffer: 6 padded image rows (input), or 6 x size rows of tw tiles (the others) */
    const size_t buffer_size = (size_t)6 * (size_t)(4 * job.tiles_wide + 2) * (size_t)job.channels * element;
    pthread_t handles[MAX_THREADS];
    job_t jobs[MAX_THREADS];
    int started = 0, status = 0;
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > rows) threads = rows > 0 ? (int)rows : 1;
    for (int t = 0; t < threads; t++) {
        jobs[t] = job;
        jobs[t].first_row = rows * t / threads;
        jobs[t].last_row = rows * (t + 1) / threads;
        jobs[t].buffer = malloc(buffer_size);
        if (jobs[t].buffer == NULL) status = -1;
    }
    for (int t = 1; t < threads && status == 0; t++) {
        if (pthread_create(&handles[t], NULL, run_job, &jobs[t]) != 0) {
            status = -1;
            break;
        }
        started = t;
    }
    if (status == 0) run_job(&jobs[0]);
    for (int t = 1; t <= started; t++) pthread_join(handles[t], NULL);
    for (int t = 0; t < threads; t++) free(jobs[t].buffer);
    return status;
}

/* images (N, H, W, C) -> tiles (36, N*th*tw, C) */
int winograd_input_tiles(const void *images, void *tiles, int is_double, int64_t batch, int64_t height,
                         int64_t width, int64_t channels, int64_t tiles_high, int64_t tiles_wide, int threads) {
    job_t job = {0, is_double, images, tiles, NULL, batch, height, width, channels, tiles_high, tiles_wide,
                 4, OUTPUT_T, 0, 0, NULL};
    return run_parallel(job, threads);
}

/* products (36, N*th*tw, K) -> images (N, H', W', K), H' = min(H, size*th), size 4, or 2 with `pooled` */
int winograd_output_from_tiles(const void *products, const void *bias, void *images, int is_double, int pooled,
                               int64_t batch, int64_t height, int64_t width, int64_t channels, int64_t tiles_high,
                               int64_t tiles_wide, int threads) {
    job_t job = {1, is_double, products, images, bias, batch, height, width, channels, tiles_high, tiles_wide,
                 pooled ? 2 : 4, pooled ? POOLED_OUTPUT_T : OUTPUT_T, 0, 0, NULL};
    return run_parallel(job, threads);
}

/* gradient (N, H', W', K) -> tiles (36, N*th*tw, K), the adjoint of winograd_output_from_tiles */
int winograd_output_gradient_tiles(const void *gradient, void *tiles, int is_double, int pooled, int64_t batch,
                                   int64_t height, int64_t width, int64_t channels, int64_t tiles_high,
                                   int64_t tiles_wide, int threads) {
    job_t job = {2, is_double, gradient, tiles, NULL, batch, height, width, channels, tiles_high, tiles_wide,
                 pooled ? 2 : 4, pooled ? POOLED_OUTPUT_T : OUTPUT_T, 0, 0, NULL};
    return run_parallel(job, threads);
}

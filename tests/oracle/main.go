// kubelet-keyring-oracle answers, with the kubelet's own code, which pull-secret credentials
// the kubelet would use for an image: the test oracle of our matching and normalization
// (tests/kubelet_oracle.rs). Built by build.sh from the modules pinned in go.mod.
//
// Input, one JSON object per line:
//
//	{"id": 1, "secrets": ["<base64 .dockerconfigjson>", ...], "images": ["nginx", ...]}
//
// Each secret is handed to the kubelet as a kubernetes.io/dockerconfigjson Secret, in order,
// as a pod's imagePullSecrets are. To tell which `auths` entry a credential came from, the
// caller writes an identifier into each entry's username; `used` lists them in the order the
// kubelet would try them.
//
// Output, one line per input line:
//
//	{"id": 1, "keyringError": "...", "images": [{"name": "...", "repoToPull": "...",
//	  "error": "...", "used": ["0:3", ...]}]}
//
// `name` and `error` come from reference.ParseNormalizedNamed, `repoToPull` and `used` from the
// kubelet's path: parsers.ParseImageName (twice, as EnsureImageExists does),
// secrets.MakeDockerKeyring and DockerKeyring.Lookup. `keyringError` is set when
// MakeDockerKeyring refuses the secrets (then the kubelet pulls nothing for the pod).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/distribution/reference"
	"github.com/go-logr/logr"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/credentialprovider"
	"k8s.io/kubernetes/pkg/credentialprovider/secrets"
	"k8s.io/kubernetes/pkg/util/parsers"
)

type request struct {
	ID      int64    `json:"id"`
	Secrets [][]byte `json:"secrets"`
	Images  []string `json:"images"`
}

type imageAnswer struct {
	Name       string   `json:"name,omitempty"`
	Error      string   `json:"error,omitempty"`
	RepoToPull string   `json:"repoToPull,omitempty"`
	PullError  string   `json:"pullError,omitempty"`
	Used       []string `json:"used"`
}

type answer struct {
	ID           int64         `json:"id"`
	KeyringError string        `json:"keyringError,omitempty"`
	Images       []imageAnswer `json:"images"`
}

func main() {
	// The keyring logs every auths entry it ignores; millions of cases would flood stderr.
	klog.SetLogger(logr.Discard())

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 0, 1<<20), 64<<20)
	out := bufio.NewWriterSize(os.Stdout, 1<<16)
	enc := json.NewEncoder(out)
	for in.Scan() {
		var req request
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			fmt.Fprintf(os.Stderr, "kubelet-keyring-oracle: bad request line: %v\n", err)
			os.Exit(2)
		}
		if err := enc.Encode(answerRequest(&req)); err != nil {
			fmt.Fprintf(os.Stderr, "kubelet-keyring-oracle: %v\n", err)
			os.Exit(1)
		}
		// The caller waits for each answer before it sends the next batch.
		if err := out.Flush(); err != nil {
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "kubelet-keyring-oracle: reading input: %v\n", err)
		os.Exit(2)
	}
}

func answerRequest(req *request) answer {
	pullSecrets := make([]v1.Secret, len(req.Secrets))
	for i, data := range req.Secrets {
		pullSecrets[i] = v1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s%d", i), Namespace: "oracle"},
			Type:       v1.SecretTypeDockerConfigJson,
			Data:       map[string][]byte{v1.DockerConfigJsonKey: data},
		}
	}
	ans := answer{ID: req.ID, Images: make([]imageAnswer, len(req.Images))}
	// No node keyring and no credential provider plugins: only the pod's secrets.
	keyring, err := secrets.MakeDockerKeyring(pullSecrets, nil)
	if err != nil {
		ans.KeyringError = err.Error()
	}
	for i, image := range req.Images {
		ans.Images[i] = answerImage(image, keyring, err == nil)
	}
	return ans
}

func answerImage(image string, keyring credentialprovider.DockerKeyring, keyringOK bool) imageAnswer {
	a := imageAnswer{Used: []string{}}
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		a.Error = err.Error()
	} else {
		a.Name = named.Name()
	}

	repoToPull, err := kubeletRepoToPull(image)
	if err != nil {
		a.PullError = err.Error()
		return a
	}
	a.RepoToPull = repoToPull
	if !keyringOK || keyring == nil {
		return a
	}
	creds, _ := keyring.Lookup(repoToPull)
	for _, c := range creds {
		a.Used = append(a.Used, c.Username)
	}
	return a
}

// kubeletRepoToPull is what imageManager.EnsureImageExists looks up: the image with the
// default tag applied (applyDefaultImageTag, unexported in pkg/kubelet/images), parsed again
// by makeLookupPullCredentialsFunc.
func kubeletRepoToPull(image string) (string, error) {
	_, tag, digest, err := parsers.ParseImageName(image)
	if err != nil {
		return "", err
	}
	if len(digest) == 0 && len(tag) > 0 && !strings.HasSuffix(image, ":"+tag) {
		image = image + ":" + tag
	}
	repoToPull, _, _, err := parsers.ParseImageName(image)
	return repoToPull, err
}
